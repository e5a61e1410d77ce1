"""Command line of the analytics engine: compare, srm, power, report and serve.

Examples::

    python -m analytics compare --input arms.json
    python -m analytics srm --counts 1000 1200 --weights 0.5 0.5
    python -m analytics power --metric-type binomial --baseline 0.1 --users 20000
    python -m analytics report ranking-dml --store .data/analytics/events --metrics analytics/examples/metrics.yaml
    python -m analytics report ranking-dml --store ... --metrics ... --start 2024-05-13T09:30:00Z
    python -m analytics serve --store clickhouse://ch:8123/mtrank --metrics analytics/examples/metrics.yaml
    python -m analytics migrate --from events.db --to .data/analytics/events
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from analytics import AnalyticsError
from grpc_serving import HelpFormatter
from grpc_serving.flag_types import NON_NEGATIVE, PORT, POSITIVE, POSITIVE_INT

if TYPE_CHECKING:
    from analytics.metrics import AnalysisConfig

EXIT_USAGE = 2


class CliError(AnalyticsError):
    """A user error the CLI reports in one line, without a traceback."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, allow_nan=False))


def _cmd_compare(args: argparse.Namespace) -> None:
    from analytics.stats.compare import CompareInput, compare

    source = sys.stdin if args.input == "-" else None
    try:
        text = source.read() if source is not None else Path(args.input).read_text()
        request = CompareInput.model_validate(json.loads(text))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {args.input}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise CliError(f"{args.input}: not JSON: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"{args.input}: {problems}") from exc
    _print_json(compare(request))


def _cmd_srm(args: argparse.Namespace) -> None:
    from analytics.stats.srm import SRM_THRESHOLD, srm_p_value

    weights = args.weights or [1.0] * len(args.counts)
    try:
        p_value = srm_p_value(args.counts, weights)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        _print_json({"p_value": p_value, "flagged": p_value < SRM_THRESHOLD, "threshold": SRM_THRESHOLD})
    else:
        print(f"{p_value:.6g}")


def _cmd_power(args: argparse.Namespace) -> None:
    from analytics.stats.power import PowerInputs, minimum_detectable_effect, power, required_sample_size

    if args.users is None and args.effect is None:
        raise CliError("give --users (for the MDE), --effect (for the sample size) or both")
    for flag, value in (("--baseline", args.baseline), ("--std", args.std), ("--users", args.users),
                        ("--effect", args.effect)):  # fmt: skip
        if value is not None and not math.isfinite(value):
            raise CliError(f"{flag} must be a finite number, got {value}")
    if args.users is not None and args.users <= 0:
        raise CliError(f"--users must be > 0, got {args.users:g}")
    if args.std is not None and args.std <= 0:
        raise CliError(f"--std must be > 0, got {args.std:g}")
    if not args.alpha < args.power < 1:  # at or below alpha, every test "reaches" it
        raise CliError(f"--power must be in (--alpha, 1) = ({args.alpha:g}, 1), got {args.power:g}")
    try:
        inputs = PowerInputs(
            metric_type=args.metric_type,
            baseline_mean=args.baseline,
            baseline_variance=args.std**2 if args.std is not None else None,
            weights=tuple(args.weights),
            alpha=args.alpha,
            alternative=args.alternative,
            difference_type=args.difference_type,
        )
        out: dict[str, Any] = {
            "difference_type": args.difference_type,
            "alpha": args.alpha,
            "target_power": args.power,
        }
        if args.users is not None:
            out["users"] = args.users
            out["mde"] = minimum_detectable_effect(inputs, args.users, args.power)
            if args.effect is not None:
                out["power"] = power(inputs, args.users, args.effect)
        if args.effect is not None:
            out["effect"] = args.effect
            out["required_users"] = required_sample_size(inputs, args.effect, args.power)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _print_json(out)


def _store_not_created(spec: str) -> bool:
    """True when ``spec`` names a local store folder the consumer has not created yet: missing, or empty
    (opening an empty folder would make it a store, and readers never create one)."""
    from analytics.store import is_local_store

    path = Path(spec.split("://", 1)[-1])
    return is_local_store(spec) and (not path.exists() or path.is_dir() and not any(path.iterdir()))


def _open_existing_store(spec: str) -> Any:
    """The store ``spec`` names; a local one must exist already (readers never create one)."""
    from analytics.store import StoreError, open_store

    try:
        if _store_not_created(spec):
            raise CliError(f"no event store at {spec}")
        return open_store(spec)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # a folder or file this user may not read: a traceback otherwise
        raise CliError(f"cannot read the event store {spec}: {exc.strerror or exc}") from exc


class _StoreWhenCreated:
    """``serve``'s store before the consumer has created its folder (the dashboard may start first: compose's
    depends_on waits for the consumer's start only, one pod starts both): the server calls it on requests
    until it opens; ``serve`` closes what it opened."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.opened: Any = None

    def __call__(self) -> Any:
        from analytics.server import StoreNotReady
        from analytics.store import StoreError, open_store

        try:
            if _store_not_created(self.spec):
                raise StoreNotReady(f"no events yet: waiting for the consumer to create {self.spec}")
            self.opened = open_store(self.spec)
        except (StoreError, OSError) as exc:  # e.g. caught while the consumer writes its first files
            raise StoreNotReady(str(exc)) from exc
        return self.opened

    def __enter__(self) -> _StoreWhenCreated:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.opened is not None:
            self.opened.close()


def _served_store(spec: str) -> Any:
    """The store ``serve`` reads: opened now (a store that cannot work fails at once), or, while the consumer
    has not created the folder, a ``_StoreWhenCreated`` (unless no folder can ever be made there)."""
    try:
        created = not _store_not_created(spec)
    except OSError:
        created = True  # that cannot be read: _open_existing_store says so
    if created:
        return _open_existing_store(spec)
    path = Path(spec.split("://", 1)[-1]).absolute()
    above = next(p for p in (path, *path.parents) if p.exists())
    if not above.is_dir():
        raise CliError(f"no event store at {spec}, and none can be created there: {above} is not a folder")
    return _StoreWhenCreated(spec)


def _cmd_migrate(args: argparse.Namespace) -> None:
    from analytics.migrate import MigrationError, migrate_sqlite, open_source
    from analytics.store import StoreError, open_store

    try:
        source = open_source(Path(args.source))  # before open_store creates the target
        try:
            with open_store(args.to) as store:
                counts = migrate_sqlite(source, store, chunk=args.chunk)
        finally:
            source.close()
    except (MigrationError, StoreError) as exc:
        raise CliError(str(exc)) from exc
    _print_json({"from": args.source, "to": args.to, **counts})


def _window_flag(flag: str, text: str | None) -> int | None:
    """A --start / --end value as epoch milliseconds, read as the config's start / end are (``epoch_ms``:
    ISO 8601 with a timezone, or epoch milliseconds); None when the flag is not given."""
    from analytics.metrics import epoch_ms

    if text is None:
        return None
    try:
        return epoch_ms(int(text) if text.removeprefix("-").isdecimal() else text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def _with_window_flags(config: AnalysisConfig, args: argparse.Namespace) -> AnalysisConfig:
    """``config`` with --start / --end in place of the experiment's start / end (a flag not given: the
    config's bound stays), the window checked as the config's is, naming the flags."""
    from analytics.analysis_window import iso_ms

    start, end = _window_flag("--start", args.start), _window_flag("--end", args.end)
    if start is None and end is None:
        return config
    settings = config.experiment(args.experiment)
    start = settings.start if start is None else start
    end = settings.end if end is None else end
    if start is not None and end is not None and end <= start:
        key = f"experiments.{args.experiment}"
        if args.end is None:  # --start alone: the config's end is the other bound
            raise CliError(
                f"--start {iso_ms(start)} is not before the end {iso_ms(end)} ({key}.end of {args.metrics})"
            )
        other = f"--start {iso_ms(start)}"
        if args.start is None:
            other = f"the start {iso_ms(start)} ({key}.start of {args.metrics})"
        raise CliError(f"--end {iso_ms(end)} is not after {other}")
    windowed = settings.model_copy(update={"start": start, "end": end})
    return config.model_copy(update={"experiments": {**config.experiments, args.experiment: windowed}})


def _cmd_report(args: argparse.Namespace) -> None:
    from analytics.metrics import load_analysis_config
    from analytics.report import build_report, format_report_table

    config = _with_window_flags(load_analysis_config(args.metrics), args)  # before a store is opened
    with _open_existing_store(args.store) as store:
        if args.experiment not in store.experiments():
            raise CliError(f"no experiment {args.experiment!r} in {args.store}; known: {store.experiments()}")
        report = build_report(store, config, args.experiment, with_timeline=args.json).to_dict()
    if args.json:
        _print_json(report)
    else:
        print(format_report_table(report))


def _cmd_serve(args: argparse.Namespace) -> None:
    from analytics.metrics import load_analysis_config
    from analytics.server import AnalyticsServer

    config = load_analysis_config(args.metrics)
    with _served_store(args.store) as store:
        try:
            server = AnalyticsServer(
                store, config, host=args.host, port=args.port, cache_seconds=args.cache_seconds,
                threads=args.threads, idle_timeout_s=args.idle_timeout, srm_interval_s=args.srm_interval,
                srm_max_experiments=args.srm_max_experiments,
            )  # fmt: skip
        except OSError as exc:  # the port is taken, or the host is not an address of this machine
            raise CliError(
                f"cannot listen on --host {args.host} --port {args.port}: {exc.strerror or exc}"
            ) from exc
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGTERM as Ctrl-C: it killed the process mid-response
            signal.signal(sig, lambda *_: stopping.set())
        server.start()
        print(f"dashboard: {server.url}/ (store {args.store}, analysis config {args.metrics})", flush=True)
        stopping.wait()
        server.stop()  # no new connections; the ones being answered finish before the process exits


def build_parser() -> argparse.ArgumentParser:
    formatter = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m analytics",
        description="A/B statistics engine and dashboard server.",
        formatter_class=formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    compare = sub.add_parser(
        "compare",
        help="compare two arms given as sufficient statistics (JSON in, JSON out)",
        description="Input: {metric_type: mean|binomial|ratio, difference_type: relative|absolute, alpha, "
        "sequential, control: {...}, treatment: {...}}; arms are {n, sum, sum_squares} (mean), {n, sum} "
        "(binomial) or {n, num_sum, num_sum_squares, den_sum, den_sum_squares, num_den_sum_product} (ratio), "
        "plus {pre_sum, pre_sum_squares, post_pre_sum_product} for CUPED.",
        formatter_class=formatter,
    )
    compare.add_argument("--input", required=True, help="JSON file, or - for stdin")
    compare.set_defaults(func=_cmd_compare)

    srm = sub.add_parser(
        "srm", help="sample-ratio-mismatch p-value of users per variant", formatter_class=formatter
    )
    srm.add_argument("--counts", type=int, nargs="+", required=True, help="users per variant")
    srm.add_argument("--weights", type=float, nargs="+", help="planned traffic shares (default: equal)")
    srm.add_argument("--json", action="store_true", help="print p_value, flagged and threshold as JSON")
    srm.set_defaults(func=_cmd_srm)

    power = sub.add_parser(
        "power",
        help="power, minimum detectable effect and required users (fixed-horizon test)",
        formatter_class=formatter,
    )
    power.add_argument(
        "--metric-type", choices=["binomial", "mean"], required=True, help="a rate, or a mean with --std"
    )
    power.add_argument("--baseline", type=float, required=True, help="control rate (binomial) or mean")
    power.add_argument("--std", type=float, help="per-user standard deviation (mean metrics)")
    power.add_argument("--users", type=float, help="total users in both arms: report the MDE (and power)")
    power.add_argument("--effect", type=float, help="lift to detect: report the required users (and power)")
    power.add_argument("--power", type=float, default=0.8, help="target power")
    power.add_argument("--alpha", type=float, default=0.05, help="significance level")
    power.add_argument("--weights", type=float, nargs=2, default=[0.5, 0.5], help="control, treatment share")
    power.add_argument(
        "--alternative",
        choices=["two-sided", "greater", "less"],
        default="two-sided",
        help="the hypothesis the test will be run with",
    )
    power.add_argument(
        "--difference-type",
        choices=["relative", "absolute"],
        default="relative",
        help="--effect as a fraction of the baseline, or in the metric's units",
    )
    power.set_defaults(func=_cmd_power)

    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument(
        "--store",
        required=True,
        help="event store written by the consumer: its folder (embedded DuckDB store), duckdb:///path, or "
        "clickhouse://[user[:password]@]host[:port]/database (without user and password in the URL: "
        "$CLICKHOUSE_USER and $CLICKHOUSE_PASSWORD when set)",
    )
    store_options.add_argument("--metrics", required=True, help="analysis config YAML (metrics and settings)")

    report = sub.add_parser(
        "report",
        parents=[store_options],
        help="analyse one experiment and print a table",
        formatter_class=formatter,
    )
    report.add_argument("experiment", help="experiment key")
    report.add_argument("--json", action="store_true", help="print the dashboard's JSON report instead")
    window = "ISO 8601 with a timezone (2024-05-13T09:30:00Z, Z for UTC, or +02:00) or epoch milliseconds"
    report.add_argument(
        "--start",
        metavar="TIME",
        help="analyse the users first exposed at or after TIME, in place of the config's "
        f"experiments.<key>.start (not given: the config's, if any): {window}",
    )
    report.add_argument(
        "--end",
        metavar="TIME",
        help="analyse the users first exposed before TIME and their outcomes before it, in place of the "
        f"config's experiments.<key>.end (not given: the config's, if any): {window}",
    )
    report.set_defaults(func=_cmd_report)

    serve = sub.add_parser(
        "serve",
        parents=[store_options],
        help="serve the dashboard and its JSON API",
        description="Serve the A/B dashboard and its JSON API (/api/experiments, /healthz, /readyz) over HTTP, "
        "reading the event store. A local store the consumer has not created yet is waited for: the page says "
        "so and /readyz answers 503 until it appears, then reports are served (no restart). SIGTERM or SIGINT: "
        "stop accepting, answer the connections already accepted, exit 0.",
        formatter_class=formatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all interfaces")
    serve.add_argument("--port", type=PORT, default=8080, help="HTTP port (0 = pick a free one)")
    serve.add_argument(
        "--cache-seconds", type=NON_NEGATIVE, default=2.0, help="how long a computed report is reused"
    )
    serve.add_argument("--threads", type=POSITIVE_INT, default=16, help="connections handled at once")
    serve.add_argument(
        "--idle-timeout", type=POSITIVE, default=10.0, help="seconds a silent client may hold a connection"
    )
    serve.add_argument(
        "--srm-interval",
        metavar="SECONDS",
        type=POSITIVE,
        default=60.0,
        help="seconds between the checks of the running experiments' users per variant and sample ratio, "
        "exported at /metrics (mtrank_experiment_srm_flagged: the alert MtrankExperimentSampleRatioMismatch)",
    )
    serve.add_argument(
        "--srm-max-experiments",
        metavar="N",
        type=POSITIVE_INT,
        default=200,
        help="running experiments those checks export at most, the ones with the most users (experiment keys "
        "come from events: a producer writing junk keys must not add series without bound)",
    )
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser(
        "migrate",
        help="copy a SQLite event store (the previous format) into a DuckDB folder or ClickHouse",
        description="Copies every first exposure and outcome of a SQLite event store and its Kafka offsets, then "
        "checks that the target holds as many exposed users and outcomes as the source.",
        formatter_class=formatter,
    )
    migrate.add_argument("--from", dest="source", required=True, help="the SQLite file (events.db)")
    migrate.add_argument(
        "--to", required=True, help="a new store folder, duckdb:///path, or clickhouse://host:port/db"
    )
    migrate.add_argument("--chunk", type=int, default=500_000, help="events copied per commit")
    migrate.set_defaults(func=_cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except AnalyticsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
