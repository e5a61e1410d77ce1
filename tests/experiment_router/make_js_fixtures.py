"""Write the JavaScript reference fixtures of the router tests (needs `node` on PATH).

    python -m tests.experiment_router.make_js_fixtures numbers   # data/js_number_strings.json

`numbers` asks node for `String(x)` and `Boolean(x)` of a seeded sample of numbers (random IEEE-754 bit
patterns, integers beyond 2**53, decimals around the 1e-7 and 1e21 notation switches), so the tests check
experiment_router.jsvalues against JavaScript itself without needing node.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import subprocess
from pathlib import Path

from tests.experiment_router.jsnode import JsPrinter, encode

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
    head = json.dumps(header, indent=1)[:-2]  # leave the object open for the cases, one per line
    path.write_text(head + ',\n "cases": [\n' + ",\n".join(rows) + "\n ]\n}\n", encoding="utf-8")
    return len(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fixture", choices=["numbers"], help="which fixture to write")
    args = parser.parse_args()
    if args.fixture == "numbers":
        path = DATA / "js_number_strings.json"
        print(f"wrote {write_numbers(path)} cases to {path}")


if __name__ == "__main__":
    main()
