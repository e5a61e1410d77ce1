"""Long-lived Node.js processes that answer for JavaScript: the reference of the jsvalues and jsregex tests.

`JsPrinter` answers `String(v)` and `Boolean(v)` of JSON values, `JsNumber` `String(Number(v))`; `JsRegex` answers
`new RegExp(p, flags).test(text)` (or that the constructor throws), as GrowthBook's JS SDK evaluates
`$regex`. Requests travel as one JSON text per line; numbers JSON cannot write (NaN, +-Infinity) travel as
`{"$f": hex of their IEEE-754 bits}`. An int travels as its exact decimal text, which JSON.parse rounds to
a double as the JavaScript SDK does with any integer it receives.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from typing import Any


def line_script(answer: str, prelude: str = "") -> str:
    """A node program that answers each JSON line on stdin with `answer(request)` as one JSON line.

    `answer` may return a promise (the SDK's sticky bucket service is async): answers still go out one at a
    time, in the order of the requests.
    """
    return f"""{prelude}
const revive = (k, x) =>
  x !== null && typeof x === "object" && typeof x.$f === "string" ? Buffer.from(x.$f, "hex").readDoubleLE(0) : x;
const answer = {answer};
let answered = Promise.resolve();
require("readline")
  .createInterface({{ input: process.stdin }})
  .on("line", (line) => {{
    answered = answered
      .then(() => answer(JSON.parse(line, revive)))
      .then((result) => process.stdout.write(JSON.stringify(result) + "\\n"));
  }});
"""


_PRINT = line_script("(v) => [String(v), Boolean(v)]")
_NUMBER = line_script("(v) => String(Number(v))")
_REGEX = line_script(
    """([pattern, flags, texts]) => {
  try {
    const re = new RegExp(pattern, flags);
    return texts.map((t) => re.test(t));
  } catch (e) {
    return "SyntaxError";
  }
}"""
)


def node_available() -> bool:
    """Whether a `node` binary is on PATH."""
    return shutil.which("node") is not None


def _tagged(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$f": struct.pack("<d", value).hex()}
    if isinstance(value, list | tuple):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
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


class NodeWorker:
    """One node process running `script`; `ask` sends one JSON line per request and reads one per answer."""

    def __init__(self, script: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            ["node", "-e", script],
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def ask(self, requests: Sequence[Any]) -> list[Any]:
        """node's answer to each request, in order."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        answers = []
        for start in range(0, len(requests), 256):  # bounded batches: never fill both pipes at once
            chunk = requests[start : start + 256]
            self.proc.stdin.write("".join(encode(r) + "\n" for r in chunk))
            self.proc.stdin.flush()
            answers.extend(json.loads(self.proc.stdout.readline()) for _ in chunk)
        return answers

    def close(self) -> None:
        """End the node process."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


class JsPrinter(NodeWorker):
    """`ask(values)` gives (String(v), Boolean(v)) per value."""

    def __init__(self) -> None:
        super().__init__(_PRINT)

    def ask(self, values: Sequence[Any]) -> list[tuple[str, bool]]:
        """(String(v), Boolean(v)) for each value, as node computes them."""
        return [(text, truthy) for text, truthy in super().ask(values)]


class JsNumber(NodeWorker):
    """`ask(values)` gives String(Number(v)) per value: NaN, Infinity and -0 travel as text."""

    def __init__(self) -> None:
        super().__init__(_NUMBER)


class JsRegex(NodeWorker):
    """`ask([(pattern, flags, texts)])` gives per request a list of `test` results, or "SyntaxError"."""

    def __init__(self) -> None:
        super().__init__(_REGEX)
