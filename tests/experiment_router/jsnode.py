"""A Node.js process that answers `String(v)` and `Boolean(v)` for JSON values: the reference for jsvalues.

Values travel as one JSON text per line; numbers JSON cannot write (NaN, +-Infinity) travel as
`{"$f": hex of their IEEE-754 bits}`. An int travels as its exact decimal text, which JSON.parse rounds to a double as the
JavaScript SDK does with any integer it receives.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
from collections.abc import Sequence
from typing import Any

_SCRIPT = r"""
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const v = JSON.parse(line, (k, x) =>
    x !== null && typeof x === "object" && typeof x.$f === "string" ? Buffer.from(x.$f, "hex").readDoubleLE(0) : x,
  );
  process.stdout.write(JSON.stringify([String(v), Boolean(v)]) + "\n");
});
"""


def node_available() -> bool:
    """Whether a `node` binary is on PATH."""
    return shutil.which("node") is not None


def _tagged(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$f": struct.pack("<d", value).hex()}
    if isinstance(value, list | tuple):
        return [_tagged(v) for v in value]
    return value


def _untagged(obj: dict) -> Any:
    if set(obj) == {"$f"}:
        return struct.unpack("<d", bytes.fromhex(obj["$f"]))[0]
    return obj


def encode(value: Any) -> str:
    """One request line for `value`."""
    return json.dumps(_tagged(value))


def decode(line: str) -> Any:
    """The value a request line stands for (inverse of `encode`)."""
    return json.loads(line, object_hook=_untagged)


class JsPrinter:
    """One long-lived node process; `ask` sends a batch of values and reads one answer per value."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", "-e", _SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def ask(self, values: Sequence[Any]) -> list[tuple[str, bool]]:
        """(String(v), Boolean(v)) for each value, as node computes them."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        answers = []
        for start in range(0, len(values), 256):  # bounded batches: never fill both pipes at once
            chunk = values[start : start + 256]
            self.proc.stdin.write("".join(encode(v) + "\n" for v in chunk))
            self.proc.stdin.flush()
            for _ in chunk:
                text, truthy = json.loads(self.proc.stdout.readline())
                answers.append((text, truthy))
        return answers

    def close(self) -> None:
        """End the node process."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
