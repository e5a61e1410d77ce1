"""A local append-only journal of serialised events for when the broker is away and the buffer is full.

Format: records of a 4-byte big-endian length followed by one serialised ``Event``. A side file holds the
replay position, advanced only after the broker acknowledged the replayed events, so a producer that crashes
while replaying starts again from there (consumers deduplicate by event id). A torn last record (crash while
appending) is cut off when the journal is reopened. An exclusive lock stops two producers sharing one file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analytics.events.errors import JournalError, JournalLocked

log = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
_READ_CHUNK = 1 << 20  # bytes per read call when replaying


class Journal:
    """Append-only, replay-in-order event journal.

    Args:
        path: journal file; ``<path>.pos`` holds the replay position.
        max_bytes: appends beyond this size are refused (the producer counts them as dropped).
        fsync: fsync after every append (slower; survives power loss, not only process crashes).
    """

    def __init__(self, path: str | Path, max_bytes: int = 1 << 30, fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._pos_path = self.path.with_name(self.path.name + ".pos")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a failed write (disk full) leaves no bytes in a buffer to fail every later call
            self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - open for the journal's lifetime
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.close()
            raise JournalLocked(
                f"journal {self.path} is in use by another producer; give each producer its own journal_path"
            ) from exc
        self._end = self._recover()
        self._read_pos = self._load_pos()

    @classmethod
    def first_free_slot(cls, folder: Path, name: str, max_slots: int = 256, **kwargs: Any) -> Journal:
        """Open ``folder/<name>.<n>.journal`` for the smallest ``n`` no other live producer holds.

        Raises:
            JournalError: all ``max_slots`` slots are held.
        """
        for slot in range(max_slots):
            try:
                return cls(Path(folder) / f"{name}.{slot}.journal", **kwargs)
            except JournalLocked:
                continue
        raise JournalError(f"all {max_slots} journal slots {folder}/{name}.*.journal are in use")

    def _recover(self) -> int:
        """Cut off a torn last record and return the end of the valid data.

        Only the record headers are read, ``_READ_CHUNK`` bytes at a time: a journal can hold up to
        ``max_bytes`` (1 GiB by default), more than a producer should read into memory to start."""
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        pos, chunk_start, chunk = 0, 0, b""
        while pos + _LEN.size <= size:
            if pos + _LEN.size > chunk_start + len(chunk):  # the header is not in the chunk read last
                chunk_start, chunk = pos, os.pread(fd, min(_READ_CHUNK, size - pos), pos)
            (n,) = _LEN.unpack_from(chunk, pos - chunk_start)
            if pos + _LEN.size + n > size:
                break
            pos += _LEN.size + n
        if pos != size:
            log.warning("journal %s: cutting a torn record at byte %d of %d", self.path, pos, size)
            self._file.truncate(pos)
        return pos

    def _load_pos(self) -> int:
        try:
            pos = int(self._pos_path.read_text() or 0)
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise JournalError(f"journal position file {self._pos_path} is corrupt") from exc
        return min(pos, self._end)

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet replayed."""
        return self._end - self._read_pos

    def __bool__(self) -> bool:
        return self._end > self._read_pos

    def append(self, encoded_events: Sequence[bytes]) -> bool:
        """Append events; False (nothing written) when the journal would exceed ``max_bytes`` or the write
        fails (disk full): a partly written blob is cut off, so the records after it stay readable."""
        blob = b"".join(_LEN.pack(len(ev)) + ev for ev in encoded_events)
        if self._end + len(blob) > self.max_bytes:
            return False
        try:
            view = memoryview(blob)
            while view:  # the file is opened for appending: every write lands at its end
                view = view[self._file.write(view) :]
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            log.error("journal %s: cannot append %d bytes (%s)", self.path, len(blob), exc)
            self._file.truncate(self._end)
            return False
        self._end += len(blob)
        return True

    def read(self, max_events: int) -> tuple[list[bytes], int]:
        """Up to ``max_events`` unreplayed events and the position after them (pass it to ``advance``).

        The file is unbuffered, so the records are cut out of chunks of ``_READ_CHUNK`` bytes (a read call per
        header and per event would be two system calls per event)."""
        out: list[bytes] = []
        pos, fd = self._read_pos, self._file.fileno()
        while len(out) < max_events and pos < self._end:
            data = os.pread(fd, min(self._end - pos, _READ_CHUNK), pos)
            offset = 0
            while len(out) < max_events and offset + _LEN.size <= len(data):
                (n,) = _LEN.unpack_from(data, offset)
                if offset + _LEN.size + n > len(data):
                    break
                out.append(data[offset + _LEN.size : offset + _LEN.size + n])
                offset += _LEN.size + n
            if offset == 0:  # one event larger than a chunk
                (n,) = _LEN.unpack(os.pread(fd, _LEN.size, pos))
                out.append(os.pread(fd, n, pos + _LEN.size))
                offset = _LEN.size + n
            pos += offset
        return out, pos

    def advance(self, pos: int) -> None:
        """Mark everything before ``pos`` as delivered; empties the file once all of it is."""
        self._read_pos = pos
        if self._read_pos >= self._end:
            # The position goes first: a crash before the truncation replays delivered events (deduplicated by
            # id); the other order could leave a stale position that would skip the events journalled next.
            self._pos_path.unlink(missing_ok=True)
            self._file.truncate(0)
            self._end = self._read_pos = 0
        else:
            tmp = self._pos_path.with_name(self._pos_path.name + ".tmp")
            try:
                tmp.write_text(str(pos))
                os.replace(tmp, self._pos_path)
            except OSError as exc:  # disk full: a restart replays from the older position (dedup by event id)
                log.warning("journal %s: cannot save the replay position (%s)", self.path, exc)

    def close(self) -> None:
        """Sync to disk and release the lock."""
        if not self._file.closed:
            os.fsync(self._file.fileno())
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
