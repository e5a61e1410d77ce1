"""Write the JavaScript reference fixtures of the router tests (needs `node` on PATH).

    python -m tests.experiment_router.make_js_fixtures numbers   # data/js_number_strings.json
    python -m tests.experiment_router.make_js_fixtures js-sdk --sdk-dir DIR   # data/js_sdk_runs.json
    python -m tests.experiment_router.make_js_fixtures conditions --sdk-dir DIR   # data/js_sdk_conditions.json
    python -m tests.experiment_router.make_js_fixtures rollouts --sdk-dir DIR   # data/js_sdk_rollouts.json
    python -m tests.experiment_router.make_js_fixtures experiments --sdk-dir DIR   # data/js_sdk_experiments.json
    python -m tests.experiment_router.make_js_fixtures sticky --sdk-dir DIR   # data/js_sdk_sticky.json

`numbers` asks node for `String(x)` and `Boolean(x)` of a seeded sample of numbers (random IEEE-754 bit
patterns, integers beyond 2**53, decimals around the 1e-7 and 1e21 notation switches), so the tests check
experiment_router.jsvalues against JavaScript itself without needing node.

`js-sdk` runs GrowthBook's JavaScript SDK on a few experiments for hash attribute values of every JSON type
(booleans, numbers beyond 2**53 or in exponent notation, NaN, infinities, arrays, objects, awkward strings)
and records each result; DIR is a folder where `npm install @growthbook/growthbook@1.8.0` was run.

`conditions` asks the SDK's `evalCondition` about a seeded sample of targeting conditions over attributes of
mixed types (numbers as strings, "0x10", arrays where scalars are expected, missing paths, saved groups), where
JavaScript's loose and strict comparisons decide; `rollouts` asks `evalFeature` about force rules whose coverage
or range is 0, null, empty or short, for units hashed to exactly 0 among others; `experiments` asks `run` about
a seeded sample of experiments with odd fields (weights that do not sum to 1 or do not fit, coverage outside
[0, 1] or null, empty namespaces, ranges and filters, an empty hash attribute, unknown hash versions);
`sticky` replays sequences of evaluations through the SDK's sticky bucket service while the experiment rule
changes between them (weights, coverage, bucket versions, conditions, hash and fallback attributes).
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
    requests = [(exp, {"account": value}) for exp in SDK_EXPERIMENTS for value in SDK_VALUES]
    answers, version = _ask_sdk(_SDK_RUN, sdk_dir, requests)
    header = {
        **_sdk_header("js-sdk", version),
        "format": "[experiment index, value as JSON, [inExperiment, variationId, hashUsed, bucket]]",
        "experiments": SDK_EXPERIMENTS,
    }
    n = len(SDK_VALUES)
    rows = [json.dumps([k // n, encode(SDK_VALUES[k % n]), answer]) for k, answer in enumerate(answers)]
    _write_rows(path, header, rows)
    return len(rows)


_SDK_CONDITION = line_script(
    """([attributes, condition, groups]) => {
  try {
    return require(process.env.GB_SDK).evalCondition(attributes, condition, groups);
  } catch (e) {
    return "throws";
  }
}"""
)

CONDITION_STRINGS = [
    "", "5", " 5 ", "\t5\n", "\u00a05", "\ufeff3", "\x1c4", "05", "5.0", "5.", ".5", "1e3", "1e400", "-0", "+7",
    "0x10", "0X1f", "0o17", "0b101", "-0x10", "0x", "1_000", "Infinity", "+Infinity", "-Infinity", "inf", "nan",
    "\u0661\u0662", "abc", "ABC", "a", "b", "10", "9", "\U0001f600", "\uffff", "true", "false", "null", "1,2",
    "[object Object]", "v1.2.3", "1.2.3-rc.1", "1.10.0", "1.2.3+b\n",
]  # fmt: skip
CONDITION_NUMBERS: list[object] = [0, -0.0, 1, 2, 3, 5, 9, 10, 15, 16, 1000, 1.5, -1, 1e21, 2**53 + 1]
CONDITION_OPERATORS = [
    "$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$ini", "$nini", "$exists", "$size", "$all",
    "$alli", "$elemMatch", "$not", "$type", "$veq", "$vne", "$vgt", "$vlt", "$vgte", "$vlte", "$regex",
    "$regexi", "$inGroup", "$notInGroup",
]  # fmt: skip
CONDITION_GROUPS = {"ids": ["5", 5, "a", None], "none": [], "listed": {"type": "list", "values": ["a", 3]}}


class ConditionSampler:
    """Seeded (attributes, condition) pairs that mix JSON types wherever an operator compares values."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def scalar(self) -> object:
        k = self.rng.random()
        if k < 0.45:
            return self.rng.choice(CONDITION_STRINGS)
        if k < 0.8:
            return self.rng.choice(CONDITION_NUMBERS)
        return self.rng.choice([True, False]) if k < 0.9 else None

    def value(self, depth: int = 0) -> object:
        k = self.rng.random()
        if depth < 2 and k < 0.15:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        if depth < 2 and k < 0.2:
            return {"x": self.value(depth + 1)} if self.rng.random() < 0.7 else {}
        return self.scalar()

    def condition_value(self, depth: int = 0) -> object:
        if self.rng.random() < 0.35:
            return self.value(depth + 1)
        op = self.rng.choice(CONDITION_OPERATORS)
        arg: object
        if op in ("$in", "$nin", "$ini", "$nini", "$all", "$alli"):
            arg = [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        elif op == "$exists":
            arg = self.rng.choice([True, False, 1, 0, "", []])
        elif op == "$size":
            arg = self.rng.choice([0, 1, 2, "1", {"$gt": 0}])
        elif op in ("$not", "$elemMatch"):
            arg = self.condition_value(depth + 1) if depth < 2 else self.scalar()
        elif op == "$type":
            arg = self.rng.choice(["string", "number", "boolean", "array", "object", "null", "undefined"])
        elif op in ("$regex", "$regexi"):
            arg = self.rng.choice(["^5", "a", "\\d", "[", "^$", "B"])
        elif op in ("$inGroup", "$notInGroup"):
            arg = self.rng.choice([*CONDITION_GROUPS, "unknown", 5])
        else:
            arg = self.value(depth + 1)
        return {op: arg}

    def case(self) -> list[object]:
        attributes = {key: self.value() for key in ("a", "b") if self.rng.random() < 0.85}
        path = self.rng.choice(["a", "b", "a.x", "a.0", "a.length"])
        return [attributes, {path: self.condition_value()}]


def write_sdk_conditions(path: Path, sdk_dir: Path, n: int = 3000) -> int:
    """Run the SDK's evalCondition on `n` sampled cases; rows `[attributes, condition, verdict]`."""
    sampler = ConditionSampler(SEED)
    cases = [sampler.case() for _ in range(n)]
    answers, version = _ask_sdk(
        _SDK_CONDITION,
        sdk_dir,
        [[attributes, condition, CONDITION_GROUPS] for attributes, condition in cases],
    )
    header = {
        **_sdk_header("conditions", version),
        "seed": SEED,
        "format": "[attributes, condition, evalCondition's answer or 'throws'], saved groups as below",
        "saved_groups": CONDITION_GROUPS,
    }
    rows = [encode([*case, answer]) for case, answer in zip(cases, answers, strict=True)]
    _write_rows(path, header, rows)
    return len(rows)


_SDK_ROLLOUT = line_script(
    """([rule, id]) => {
  const { GrowthBook } = require(process.env.GB_SDK);
  const features = { f: { defaultValue: "off", rules: [rule] } };
  return new GrowthBook({ attributes: { id }, features }).evalFeature("f").value;
}"""
)
ROLLOUT_RULES: list[dict[str, object]] = [
    {"force": "on", "coverage": 0},
    {"force": "on", "coverage": 0, "hashVersion": 2},
    {"force": "on", "coverage": 0.5},
    {"force": "on", "coverage": 1},
    {"force": "on", "coverage": None},
    {"force": "on", "coverage": "0.5"},
    {"force": "on", "range": [0, 0.5]},
    {"force": "on", "range": [0.2, 0.2]},
    {"force": "on", "range": []},
    {"force": "on", "range": [0]},
    {"force": "on", "range": [], "coverage": 1},
    {"force": "on", "range": None, "coverage": 0.3},
    {"force": "on", "range": [None, 0.5]},
    {"force": "on", "range": [0, 0.5], "coverage": 0},
    {"force": "on", "coverage": 0.5, "seed": "s", "hashVersion": 2},
    {"force": "on", "coverage": 0, "hashAttribute": "missing"},
]
# u2567 and u2633 hash to exactly 0 for feature "f" with version 1, u29187 and u29345 with version 2, u11880
# with version 2 and seed "s".
ROLLOUT_IDS = ["u2567", "u2633", "u29187", "u29345", "u11880", *(f"u{i}" for i in range(40))]


def write_sdk_rollouts(path: Path, sdk_dir: Path) -> int:
    """Run the SDK's evalFeature on every (rule, id) pair; rows `[rule index, id, value]`."""
    requests = [(rule, unit) for rule in ROLLOUT_RULES for unit in ROLLOUT_IDS]
    answers, version = _ask_sdk(_SDK_ROLLOUT, sdk_dir, requests)
    header = {
        **_sdk_header("rollouts", version),
        "format": "[rule index, id, value of feature f (default 'off', the rule forces 'on')]",
        "rules": ROLLOUT_RULES,
    }
    n = len(ROLLOUT_IDS)
    rows = [json.dumps([k // n, ROLLOUT_IDS[k % n], answer]) for k, answer in enumerate(answers)]
    _write_rows(path, header, rows)
    return len(rows)


class ExperimentSampler:
    """Seeded (experiment, attributes) pairs, every optional field sometimes absent, null, odd or empty."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sometimes(self, experiment: dict, key: str, p: float, *choices: object) -> None:
        if self.rng.random() < p:
            experiment[key] = self.rng.choice(choices)

    def case(self) -> list[dict]:
        n = self.rng.randint(1, 3)
        exp: dict[str, object] = {"key": self.rng.choice(["e", "exp-2", ""]), "variations": list(range(n))}
        weights = (
            [0.5, 0.5],
            [0.2, 0.8],
            [0.3, 0.3, 0.4],
            [1],
            [0.6, 0.6],
            [-0.5, 1.5],
            [0, 1],
            [],
            None,
            [0.1] * n,
        )
        self.sometimes(exp, "weights", 0.5, *weights)
        self.sometimes(exp, "coverage", 0.5, 0, 0.5, 1, 1.5, -0.5, None, 0.0001)
        self.sometimes(
            exp, "namespace", 0.3, ["ns", 0, 0.5], ["ns", 0.5, 1], ["ns", 0.3, 0.3], [], ["ns"], None
        )
        self.sometimes(exp, "ranges", 0.2, [[0, 0.5], [0.5, 1]], [[0, 0.1]], [], [[0.5, 0.2], [0, 1]])
        self.sometimes(exp, "hashVersion", 0.3, 1, 2, 3, 0, None)
        self.sometimes(exp, "seed", 0.3, "s", "", None)
        self.sometimes(exp, "force", 0.15, 0, 1, 5, -1)  # not null: the SDK then answers variation null
        self.sometimes(exp, "active", 0.15, True, False, None)
        self.sometimes(exp, "status", 0.15, "draft", "running", "stopped")
        self.sometimes(exp, "hashAttribute", 0.2, "id", "company", "missing", "")
        filters = (
            {"seed": "f", "ranges": [[0, 0.5]]},
            {"seed": "f", "ranges": [], "attribute": "company"},
            {"ranges": [[0, 1]], "hashVersion": 1},
        )
        if self.rng.random() < 0.15:
            exp["filters"] = [self.rng.choice(filters)] if self.rng.random() < 0.8 else []
        attributes = {
            "id": self.rng.choice(["u1", "u2", "user-3", 5, "", None, "abc"]),
            "company": self.rng.choice(["acme", 0, None, "x"]),
        }
        return [exp, attributes]


def write_sdk_experiments(path: Path, sdk_dir: Path, n: int = 1000) -> int:
    """Run the SDK's `run` on `n` sampled experiments; rows `[experiment, attributes, result]`."""
    sampler = ExperimentSampler(SEED)
    cases = [sampler.case() for _ in range(n)]
    answers, version = _ask_sdk(_SDK_RUN, sdk_dir, cases)
    header = {
        **_sdk_header("experiments", version),
        "seed": SEED,
        "format": "[experiment, attributes, [inExperiment, variationId, hashUsed, bucket]]",
    }
    rows = [encode([*case, answer]) for case, answer in zip(cases, answers, strict=True)]
    _write_rows(path, header, rows)
    return len(rows)


_SDK_STICKY = line_script(
    """async ([steps]) => {
  const gb = require(process.env.GB_SDK);
  class Memory extends gb.StickyBucketService {
    constructor() { super(); this.docs = {}; }
    async getAssignments(name, value) { return this.docs[this.getKey(name, value)] || null; }
    async saveAssignments(doc) { this.docs[this.getKey(doc.attributeName, doc.attributeValue)] = structuredClone(doc); }
  }
  const service = new Memory();
  const results = [];
  for (const [features, attributes] of steps) {
    const sdk = new gb.GrowthBook({ attributes, features, stickyBucketService: service });
    await sdk.refreshStickyBuckets();
    const r = sdk.evalFeature("f");
    await new Promise((done) => setTimeout(done, 0));  // let the sticky document save
    const e = r.experimentResult;
    results.push([r.value, r.source, e ? [e.inExperiment, e.variationId, e.stickyBucketUsed, e.hashAttribute] : null]);
  }
  return [results, service.docs];
}"""
)


class StickySampler:
    """Seeded sequences of (features, attributes): one experiment rule that changes between evaluations."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def rule(self) -> dict[str, object]:
        rng = self.rng
        rule: dict[str, object] = {"key": "exp", "variations": ["a", "b", "c"][: rng.randint(2, 3)]}
        options: list[tuple[float, str, tuple]] = [
            (0.5, "weights", ([0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.2, 0.3, 0.5])),
            (0.4, "coverage", (0.2, 0.5, 1)),
            (0.4, "bucketVersion", (0, 1, 2)),
            (0.3, "minBucketVersion", (0, 1, 2)),
            (0.3, "condition", ({"country": "NL"}, {"country": "DE"})),
            (0.3, "hashAttribute", ("id", "device")),
            (0.3, "fallbackAttribute", ("device", "id")),
            (0.15, "disableStickyBucketing", (True,)),
            (0.2, "hashVersion", (2,)),
        ]
        for p, key, choices in options:
            if rng.random() < p:
                rule[key] = rng.choice(choices)
        return rule

    def case(self) -> list[list[object]]:
        base, steps = self.rule(), []
        for _ in range(self.rng.randint(2, 4)):
            rule = dict(base)
            if self.rng.random() < 0.6:  # the experiment changed since the last evaluation
                rule.update(
                    {
                        k: v
                        for k, v in self.rule().items()
                        if k not in ("key", "meta") and self.rng.random() < 0.4
                    }
                )
            keys = ("x", "y", "z") if self.rng.random() < 0.15 else ("a", "b", "c")  # variations renamed
            rule["meta"] = [{"key": k} for k in keys][: len(rule["variations"])]  # type: ignore[arg-type]
            attributes = {"id": self.rng.choice(["u1", "u2"]), "country": self.rng.choice(["NL", "DE"])}
            if self.rng.random() < 0.7:
                attributes["device"] = self.rng.choice(["d1", "d2"])
            steps.append([{"f": {"defaultValue": "off", "rules": [rule]}}, attributes])
        return steps


def write_sdk_sticky(path: Path, sdk_dir: Path, n: int = 120) -> int:
    """Run `n` sampled sequences through the SDK with one sticky bucket service each; rows `[steps, answer]`."""
    sampler = StickySampler(SEED)
    cases = [sampler.case() for _ in range(n)]
    answers, version = _ask_sdk(_SDK_STICKY, sdk_dir, [[steps] for steps in cases])
    header = {
        **_sdk_header("sticky", version),
        "seed": SEED,
        "format": "[[[features, attributes] per evaluation], [[value, source, [inExperiment, variationId, "
        "stickyBucketUsed, hashAttribute] or null] per evaluation, sticky documents at the end]]",
    }
    rows = [encode([steps, answer]) for steps, answer in zip(cases, answers, strict=True)]
    _write_rows(path, header, rows)
    return len(rows)


def _ask_sdk(script: str, sdk_dir: Path, requests: list) -> tuple[list, str]:
    """The SDK's answer to each request through `script`, and the SDK's version (installed under `sdk_dir`)."""
    module = sdk_dir / "node_modules" / "@growthbook" / "growthbook"
    version = json.loads((module / "package.json").read_text(encoding="utf-8"))["version"]
    worker = NodeWorker(script, env={"GB_SDK": str(module)})
    try:
        return worker.ask(requests), version
    finally:
        worker.close()


def _sdk_header(mode: str, version: str) -> dict[str, str]:
    """How a fixture was written, and from which SDK."""
    return {
        "generated_by": f"python -m tests.experiment_router.make_js_fixtures {mode} --sdk-dir DIR",
        "sdk": f"@growthbook/growthbook {version}",
    }


WRITERS = {
    "js-sdk": ("js_sdk_runs.json", write_sdk_runs),
    "conditions": ("js_sdk_conditions.json", write_sdk_conditions),
    "rollouts": ("js_sdk_rollouts.json", write_sdk_rollouts),
    "experiments": ("js_sdk_experiments.json", write_sdk_experiments),
    "sticky": ("js_sdk_sticky.json", write_sdk_sticky),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fixture", choices=["numbers", *WRITERS], help="which fixture to write")
    parser.add_argument(
        "--sdk-dir", type=Path, help="for the SDK fixtures: where @growthbook/growthbook is installed"
    )
    args = parser.parse_args()
    if args.fixture == "numbers":
        path = DATA / "js_number_strings.json"
        print(f"wrote {write_numbers(path)} cases to {path}")
        return
    if args.sdk_dir is None:
        parser.error(
            f"{args.fixture} needs --sdk-dir (a folder where `npm install @growthbook/growthbook` ran)"
        )
    name, write = WRITERS[args.fixture]
    path = DATA / name
    print(f"wrote {write(path, args.sdk_dir)} cases to {path}")


if __name__ == "__main__":
    main()
