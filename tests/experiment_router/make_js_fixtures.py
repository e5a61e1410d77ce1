"""Write the JavaScript reference fixtures of the router tests (needs `node` on PATH).

    python -m tests.experiment_router.make_js_fixtures numbers   # data/js_number_strings.json
    python -m tests.experiment_router.make_js_fixtures js-sdk --sdk-dir DIR   # data/js_sdk_runs.json

`numbers` asks node for `String(x)` and `Boolean(x)` of a seeded sample of numbers (random IEEE-754 bit
patterns, integers beyond 2**53, decimals around the 1e-7 and 1e21 notation switches), so the tests check
experiment_router.jsvalues against JavaScript itself without needing node.

`js-sdk` runs GrowthBook's JavaScript SDK on a few experiments for hash attribute values of every JSON type
(booleans, numbers beyond 2**53 or in exponent notation, NaN, infinities, arrays, objects, awkward strings)
and records each result; DIR is a folder where `npm install @growthbook/growthbook@1.8.0` was run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import subprocess
from pathlib import Path

from tests.experiment_router.jsnode import JsPrinter, NodeWorker, encode, line_script

DATA = Path(__file__).parent / "data"
SEED = 17


def number_sample(rng: random.Random) -> list[int | float]:
    """About 2,000 numbers that exercise every branch of Number::toString."""
    bits = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(600)]
    big_ints = [rng.choice((1, -1)) * int(10 ** rng.uniform(15.9, 25)) for _ in range(400)]
    decimals = [rng.uniform(-10, 10) * 10 ** rng.randint(-12, 25) for _ in range(400)]
    edges = []
    for edge in (1e21, 1e-7, 1e-6, 2.0**53, 1e16, 5e-324):
        x = edge
        for _ in range(25):
            edges += [x, -x]
            x = math.nextafter(x, math.inf)
        x = math.nextafter(edge, -math.inf)
        edges += [x, -x]
    short = [round(rng.uniform(-1000, 1000), rng.randint(0, 6)) for _ in range(200)]
    small_ints = list(range(-20, 21)) + [2**53 - 1, 2**53, 2**53 + 1, 2273199612178534537]
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 10**400, -(10**400)]
    return bits + big_ints + decimals + edges + short + small_ints + special


def _write_rows(path: Path, header: dict, rows: list[str]) -> None:
    """`header` as a JSON object with a "cases" list added, one case per line (readable diffs)."""
    head = json.dumps(header, indent=1)[:-2]  # leave the object open for the cases
    path.write_text(head + ',\n "cases": [\n' + ",\n".join(rows) + "\n ]\n}\n", encoding="utf-8")


def write_numbers(path: Path) -> int:
    """Ask node about the sample and write `[request line, String(x), Boolean(x)]` rows."""
    values = number_sample(random.Random(SEED))
    printer = JsPrinter()
    try:
        answers = printer.ask(values)
    finally:
        printer.close()
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    header = {
        "generated_by": "python -m tests.experiment_router.make_js_fixtures numbers",
        "node": version,
        "seed": SEED,
        "format": "[x as JSON text ({'$f': hex of the double} for NaN, +-Infinity), String(x), Boolean(x)]",
    }
    rows = [json.dumps([encode(v), text, truthy]) for v, (text, truthy) in zip(values, answers, strict=True)]
    _write_rows(path, header, rows)
    return len(values)


_SDK_RUN = line_script(
    """([experiment, attributes]) => {
  const r = new GrowthBook({ attributes }).run(experiment);
  return [r.inExperiment, r.variationId, r.hashUsed, r.bucket ?? null];
}""",
    prelude="const { GrowthBook } = require(process.env.GB_SDK);",
)

SDK_EXPERIMENTS = [
    {"key": "plain-v1", "variations": [0, 1], "hashAttribute": "account", "hashVersion": 1},
    {"key": "seeded-v2", "variations": [0, 1, 2], "hashAttribute": "account", "hashVersion": 2, "seed": "s"},
    {
        "key": "layered-v2",
        "variations": [0, 1],
        "hashAttribute": "account",
        "hashVersion": 2,
        "namespace": ["ns", 0.1, 0.9],
    },
    {
        "key": "partial-v1",
        "variations": [0, 1],
        "hashAttribute": "account",
        "hashVersion": 1,
        "coverage": 0.7,
        "weights": [0.2, 0.8],
    },
]
SDK_VALUES: list[object] = [
    True, False, None, 0, -0.0, 1, -3, 1.5, 2273199612178534537, 2**53 + 1, 1e21, 1e-7, 123e-20, 1e300,
    math.nan, math.inf, -math.inf, [], [1, 2], [None], [""], [[1, 2], 3], {}, {"a": 1}, "", "0", "false",
    "true", "a\x00", "\x00", "😀", "\ud800", "user-1", "é" * 300,
]  # fmt: skip


def write_sdk_runs(path: Path, sdk_dir: Path) -> int:
    """Run the JS SDK on every (experiment, value) pair and write `[experiment index, value, result]` rows."""
    module = sdk_dir / "node_modules" / "@growthbook" / "growthbook"
    package = json.loads((module / "package.json").read_text(encoding="utf-8"))
    requests = [(exp, {"account": value}) for exp in SDK_EXPERIMENTS for value in SDK_VALUES]
    worker = NodeWorker(_SDK_RUN, env={"GB_SDK": str(module)})
    try:
        answers = worker.ask(requests)
    finally:
        worker.close()
    header = {
        "generated_by": "python -m tests.experiment_router.make_js_fixtures js-sdk --sdk-dir DIR",
        "sdk": f"@growthbook/growthbook {package['version']}",
        "format": "[experiment index, value as JSON, [inExperiment, variationId, hashUsed, bucket]]",
        "experiments": SDK_EXPERIMENTS,
    }
    n = len(SDK_VALUES)
    rows = [json.dumps([k // n, encode(SDK_VALUES[k % n]), answer]) for k, answer in enumerate(answers)]
    _write_rows(path, header, rows)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fixture", choices=["numbers", "js-sdk"], help="which fixture to write")
    parser.add_argument("--sdk-dir", type=Path, help="for js-sdk: where @growthbook/growthbook is installed")
    args = parser.parse_args()
    if args.fixture == "numbers":
        path = DATA / "js_number_strings.json"
        print(f"wrote {write_numbers(path)} cases to {path}")
    else:
        if args.sdk_dir is None:
            parser.error("js-sdk needs --sdk-dir (a folder where `npm install @growthbook/growthbook` ran)")
        path = DATA / "js_sdk_runs.json"
        print(f"wrote {write_sdk_runs(path, args.sdk_dir)} cases to {path}")


if __name__ == "__main__":
    main()
