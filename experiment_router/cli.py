"""Command line: validate, assign, preview and conformance (`python -m experiment_router --help`)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
from scipy.stats import chisquare

from experiment_router.changes import compare, describe, variant_buckets
from experiment_router.conformance import EXCLUSION_REASONS, load_cases, run_suite
from experiment_router.errors import ConfigError
from experiment_router.loader import repository_checker, repository_tasks
from experiment_router.router import Payload, Router, serving_assignments
from grpc_serving import HelpFormatter

EXIT_CONFIG = 2
EXIT_CONFORMANCE = 1
MAX_PREVIEW_USERS = 10_000_000
"""``preview --users`` above this is refused: the preview holds every id and assignment (about 200 bytes a
user, 2 GB and 80 s at the limit); 10**11 users ran until memory ran out."""


class _Parser(argparse.ArgumentParser):
    """argparse printing a usage error as one line (it printed the usage first, up to six lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def _attr(text: str) -> tuple[str, str]:
    """Parse `k=v`, keeping v a string: the servers get attributes as strings (gRPC map<string, string>),
    and `5` is not `"5"` to `$in` or `$eq`, nor `0` to hashing (falsy), so typed values would not say
    what a server decides."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r} (no key)")
    return key, value


def _users(text: str) -> int:
    """``--users``: 1 to MAX_PREVIEW_USERS (-5 printed an empty preview, 10**11 ran out of memory)."""
    try:
        users = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= users <= MAX_PREVIEW_USERS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_PREVIEW_USERS}, got {users}")
    return users


def _unix_time(text: str) -> float:
    """``--at``: a finite number (NaN compares false with every start and end: it passed every window)."""
    try:
        moment = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a unix time, got {text!r}") from None
    if not math.isfinite(moment):
        raise argparse.ArgumentTypeError(f"expected a finite unix time, got {text}")
    return moment


def _command(
    sub: argparse._SubParsersAction[_Parser],
    name: str,
    summary: str,
    parents: Sequence[_Parser] = (),
) -> argparse.ArgumentParser:
    """A subcommand whose own ``--help`` starts with ``summary`` too (it said only its usage and options)."""
    return sub.add_parser(
        name,
        parents=list(parents),
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        formatter_class=HelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (one subcommand per verb)."""
    parser = _Parser(
        prog="python -m experiment_router",
        description="Validate experiment configs, explain assignments, preview splits, run GrowthBook conformance.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m experiment_router validate experiment_router/examples/two_layers.yaml\n"
            "  python -m experiment_router assign --config experiments.yaml --user u42 --attr country=NL\n"
            "  python -m experiment_router preview --config experiments.yaml --users 200000\n"
            "  python -m experiment_router conformance tests/experiment_router/data/growthbook_cases.json\n"
            "exit status: 0 ok, 1 a required conformance case failed, 2 invalid config"
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = _Parser(add_help=False)
    common.add_argument(
        "--model-repository",
        metavar="DIR",
        help="also check that every payload names <DIR>/<model>/<version>/manifest.json",
    )

    p = _command(
        sub, "validate", "check a config file; exit 2 with file:line errors when invalid", parents=[common]
    )
    p.add_argument("config", metavar="CONFIG", help="experiment config (YAML or JSON)")

    evaluation = _Parser(add_help=False)  # what assign and preview evaluate users with
    evaluation.add_argument(
        "--attr",
        action="append",
        type=_attr,
        default=[],
        metavar="K=V",
        help="user attribute, repeatable (preview: every user's); V stays a string, as servers get it "
        "(--attr country=NL)",
    )
    evaluation.add_argument(
        "--at",
        type=_unix_time,
        default=None,
        metavar="UNIX_TIME",
        help="evaluate start/end windows at this Unix time instead of now",
    )

    p = _command(
        sub, "assign", "show every experiment's variant for one user, and why", parents=[common, evaluation]
    )
    p.add_argument("--config", required=True, metavar="CONFIG", help="experiment config (YAML or JSON)")
    p.add_argument("--user", required=True, metavar="ID", help="user id (the user_id attribute)")

    p = _command(
        sub,
        "preview",
        "allocation counts per experiment/variant over N synthetic users, with an SRM p-value",
        parents=[common, evaluation],
    )
    p.add_argument("--config", required=True, metavar="CONFIG", help="experiment config (YAML or JSON)")
    p.add_argument(
        "--users", type=_users, default=100_000, metavar="N", help="number of synthetic user ids (user-0 ...)"
    )
    p.add_argument("--include-drafts", action="store_true", help="preview draft experiments as if running")
    p.add_argument(
        "--compare-to",
        metavar="OLD_CONFIG",
        help="also say, per experiment in both files, how many of the users switch variant, leave or enter "
        "when OLD_CONFIG (the config in force) is replaced by --config (servers keep no sticky buckets)",
    )

    p = _command(sub, "conformance", "run GrowthBook's cases.json; exit 1 if a required case fails")
    p.add_argument("cases", metavar="PATH_TO_CASES_JSON", help="GrowthBook SDK cases.json")
    p.add_argument("--show-failures", action="store_true", help="list the names of failing cases")
    return parser


def _load(args: argparse.Namespace, path: str) -> Router:
    repository = getattr(args, "model_repository", None)
    if repository and not Path(repository).is_dir():  # else every model would be reported missing
        raise ConfigError("--model-repository: no such folder", file=repository)
    if not repository:
        return Router.from_file(path)
    return Router.from_file(
        path, model_exists=repository_checker(repository), ranking_tasks=repository_tasks(repository)
    )


def cmd_validate(args: argparse.Namespace) -> int:
    router = _load(args, args.config)
    running = sum(1 for e in router.config.experiments if e.status == "running")
    print(f"{args.config}: OK ({len(router.experiment_keys)} experiments, {running} running)")
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    router = _load(args, args.config)
    attrs = dict(args.attr)
    assignments = router.assign(args.user, attrs, now=args.at)
    if router.in_global_holdout(args.user, attrs):
        print(f"user {args.user!r} is in the global holdout: every stage gets its default model")
    width = max((len(a.experiment_key) for a in assignments), default=10)
    for a in assignments:
        variant = a.variant_key if a.in_experiment else "-"
        log = "log exposure" if a.should_log else "no exposure"
        served = [arm.payload for arm in a.interleaving.arms] if a.interleaving else [a.payload]
        print(
            f"{a.experiment_key:<{width}}  [{a.stage}/{a.layer or 'no layer'}]  variant={variant:<10}  "
            f"{log:<12}  {a.reason}  -> " + " + ".join(f"{p.model_name} v{p.model_version}" for p in served)
        )
    interleaved = {a.stage: a.interleaving for a in serving_assignments(assignments) if a.interleaving}
    for stage, payload in router.payloads(assignments).items():
        merged = interleaved.get(stage)
        if merged is None:
            print(f"{stage}: {_payload_text(payload)}")
        else:  # the user sees both arms' rankings merged, not the first arm's payload alone
            arms = " + ".join(_payload_text(arm.payload) for arm in merged.arms)
            print(f"{stage}: {arms}, interleaved by {merged.method}")
    return 0


def _payload_text(payload: Payload) -> str:
    weights = f" task_weights={dict(payload.task_weights)}" if payload.task_weights else ""
    return f"{payload.model_name} v{payload.model_version}{weights}"


def _drafts_running(router: Router) -> Router:
    """The router with its draft experiments running (``--include-drafts``)."""
    # only the fields the file set: validation tells a field left out from one set to its default
    data = router.config.model_dump(exclude_unset=True)
    for exp in data.get("experiments", []):
        if exp.get("status", "draft") == "draft":
            exp["status"] = "running"
    return Router.from_dict(data)


def cmd_preview(args: argparse.Namespace) -> int:
    router = _load(args, args.config)
    old = _load(args, args.compare_to) if args.compare_to else None
    if args.include_drafts:
        router = _drafts_running(router)
        old = _drafts_running(old) if old is not None else None
    ids = [f"user-{i}" for i in range(args.users)]
    now = time.time() if args.at is None else args.at
    result = router.assign_many(ids, dict(args.attr), now=now)
    print(f"{args.users} synthetic users, attributes {dict(args.attr) or '{}'}")
    for exp in router.config.experiments:
        keys, chosen = variant_buckets(exp, result[exp.key])
        counts = np.bincount(chosen + 1, minlength=len(keys) + 1)
        print(f"{exp.key} [{exp.stage}, {exp.status}]: {counts[0]} not in experiment")
        widths = np.array([hi - lo for lo, hi in router.ranges_of(exp.key)], dtype=float)
        observed = counts[1:]
        for key, n, w in zip(keys, observed, widths, strict=True):
            share = n / observed.sum() if observed.sum() else 0.0
            expected = w / widths.sum() if widths.sum() else 0.0
            print(f"  {key:<16} {n:>9}  {share:7.2%} (expected {expected:.2%})")
        live = widths > 0  # a weight-0 variation expects nobody: test the split between the others
        if live.sum() > 1 and observed[live].sum() > 0:
            p = chisquare(observed[live], f_exp=widths[live] / widths.sum() * observed[live].sum()).pvalue
            flag = "  <- sample ratio mismatch" if p < 0.001 else ""
            print(f"  SRM chi-square p-value: {p:.4f}{flag}")
    if old is not None:
        print(f"compared to {args.compare_to} (the same users, attributes and time):")
        for change in compare(old, router, ids, dict(args.attr), now=now, after=result):
            print(f"  {describe(change)}")
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    reports = run_suite(load_cases(args.cases))
    if not any(r.passed or r.failed or r.excluded for r in reports):  # `{}` "passed" every section
        raise ConfigError(
            f"no cases in any section of GrowthBook's cases.json ({', '.join(r.section for r in reports)})",
            file=args.cases,
        )
    for r in reports:
        note = f" ({r.excluded} excluded: {EXCLUSION_REASONS[r.section]})" if r.excluded else ""
        print(f"{r.section}: {r.passed} passed, {r.failed} failed{note}")
        if args.show_failures:
            for name in r.failed_names:
                print(f"  FAILED {name}")
    return EXIT_CONFORMANCE if any(r.failed for r in reports) else 0


COMMANDS = {
    "validate": cmd_validate,
    "assign": cmd_assign,
    "preview": cmd_preview,
    "conformance": cmd_conformance,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; config errors print file:line messages and exit 2 without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc.describe()}", file=sys.stderr)
        return EXIT_CONFIG
