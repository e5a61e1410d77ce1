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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pos_path = self.path.with_name(self.path.name + ".pos")
        self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open for the journal's lifetime
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
        """Cut off a torn last record and return the end of the valid data."""
        self._file.seek(0)
        data = self._file.read()
        pos = 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + n > len(data):
                break
            pos += _LEN.size + n
        if pos != len(data):
            log.warning("journal %s: cutting a torn record at byte %d of %d", self.path, pos, len(data))
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
        """Append events; False (nothing written) when the journal would exceed ``max_bytes``."""
        blob = b"".join(_LEN.pack(len(ev)) + ev for ev in encoded_events)
        if self._end + len(blob) > self.max_bytes:
            return False
        self._file.seek(0, os.SEEK_END)
        self._file.write(blob)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._end += len(blob)
        return True

    def read(self, max_events: int) -> tuple[list[bytes], int]:
        """Up to ``max_events`` unreplayed events and the position after them (pass it to ``advance``)."""
        self._file.seek(self._read_pos)
        out: list[bytes] = []
        pos = self._read_pos
        while len(out) < max_events and pos < self._end:
            header = self._file.read(_LEN.size)
            (n,) = _LEN.unpack(header)
            out.append(self._file.read(n))
            pos += _LEN.size + n
        return out, pos

    def advance(self, pos: int) -> None:
        """Mark everything before ``pos`` as delivered; empties the file once all of it is."""
        self._read_pos = pos
        if self._read_pos >= self._end:
            self._file.truncate(0)
            self._end = self._read_pos = 0
            self._pos_path.unlink(missing_ok=True)
        else:
            tmp = self._pos_path.with_name(self._pos_path.name + ".tmp")
            tmp.write_text(str(pos))
            os.replace(tmp, self._pos_path)

    def close(self) -> None:
        """Flush and release the lock."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
