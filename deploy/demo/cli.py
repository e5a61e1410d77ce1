"""End-to-end demo: A/B experiments (retrieval and ranking) and, with --interleaving, an interleaving test of two
rankers, on a simulated product, through the real stack.

    python -m deploy.demo            # two experiments: retrieval-only GAT vs SSMTL, MMoE vs MMoE + DML
    python -m deploy.demo --aa       # A/A: both arms of each experiment serve the same model
    python -m deploy.demo --interleaving   # MMoE vs MMoE + DML interleaved, next to their A/B test
    python -m deploy.demo --data ../shared/data   # ground truth from held-out ego-Facebook friendships

Steps: train and export four small models on a world with a known ground truth (synthetic, or real friendships
of which a held-out fifth decides the clicks, see ``deploy.demo.ego_facebook``); start the embedded
Kafka broker, the retrieval server, the ranker server and the analytics consumer as real processes; simulate
users who ask for a feed and click by ground truth; wait until every event is persisted; print the report of
each experiment (A/B, or interleaving: which ranker users prefer), write it as JSON, and show the dashboard's
address. Every process it started is stopped when it ends, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import grpc
import torch
import yaml

from analytics import AnalyticsError
from analytics.events.client import OutcomeClient
from analytics.kafka.broker import BrokerError, EmbeddedBroker, free_port
from analytics.metrics import load_analysis_config
from analytics.report import build_report, format_report_table
from analytics.server import AnalyticsServer
from analytics.store.duckdb_store import DuckDBEventStore
from deploy.demo.drain import DrainError, drain_consumer
from deploy.demo.simulator import SimulationConfig, UserSimulator
from deploy.demo.stack import Stack, StackError
from deploy.demo.training import (
    RETRIEVAL_MODELS,
    VERSION,
    TrainingBudget,
    train_ranking,
    train_retrieval,
)
from deploy.demo.world import make_world
from experiment_router import Router
from experiment_router.errors import ConfigError
from experiment_router.loader import repository_tasks
from grpc_serving import HelpFormatter
from grpc_serving.flag_types import POSITIVE
from models.errors import DataError
from proto import ranking_pb2_grpc

logger = logging.getLogger("deploy.demo")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPOSURES, OUTCOMES = "mtrank.exposures", "mtrank.outcomes"
CONSUMER_GROUP = "demo-analytics"
DEFAULT_WORKDIR = ROOT / ".data" / "demo"
WORKDIR_MARKER = ".mtrank-demo"  # in every workdir the demo fills: the only non-empty folders it empties


class WorkdirError(Exception):
    """--workdir names a file, a folder holding what the demo did not write (it would be deleted), or a folder
    another run is using."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised by the demo's own SIGINT handler. CPython (3.8 to 3.13 at least) marks a plain
    KeyboardInterrupt that leaves an exec() or eval() of a string (how dataclasses and namedtuples are
    built, as in torch's lazy imports during training) as unhandled even when ``main`` catches it, and
    then ends a ``python -m`` run by SIGINT (-2), not with ``main``'s 130; it marks that exact class only."""


class Terminated(Interrupted):
    """SIGTERM: stops the demo like Ctrl-C does, but exits with 143, as the caller (kill, systemd) expects."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    config = parser.add_mutually_exclusive_group()
    config.add_argument("--aa", action="store_true", help="run the A/A config: nothing should be significant")
    config.add_argument("--interleaving", action="store_true",
                        help="run deploy/demo/interleaving.yaml: half of the ranking layer sees MMoE and MMoE + DML "
                             "interleaved (team draft), the other half their A/B test; both reports are printed")
    config.add_argument("--experiments", type=Path,
                        help="experiment config (default: deploy/demo/ab.yaml, aa.yaml or interleaving.yaml)")
    parser.add_argument("--metrics", type=Path, default=HERE / "metrics.yaml", help="analysis config")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="models, logs, store, report; emptied on every run, so a new folder, an empty one or "
                             "one an earlier run filled")  # fmt: skip
    parser.add_argument("--data", type=Path,
                        help="ego-Facebook folder, or a folder holding ego-facebook/ (e.g. ../shared/data; official "
                             "files: https://snap.stanford.edu/data/ego-Facebook.html): ground truth from held-out "
                             "real friendships instead of the synthetic world")
    parser.add_argument("--users", type=_positive_int, default=1500,
                        help="simulated users (synthetic: also the candidate pool; ego-Facebook: a random subset)")
    parser.add_argument("--requests-per-user", type=_positive_int, default=3, help="feeds each user asks for")
    parser.add_argument("--top-k", type=_positive_int, default=10, help="items shown per feed")
    parser.add_argument("--retrieve-k", type=_positive_int, default=100, help="candidates retrieved per feed")
    parser.add_argument("--concurrency", type=_positive_int, default=8, help="simultaneous simulated users")
    parser.add_argument("--impressions", type=_positive_int, default=TrainingBudget.impressions,
                        help="ranking training rows")
    parser.add_argument("--ranking-epochs", type=_positive_int, default=TrainingBudget.ranking_epochs,
                        help="max ranking epochs")
    parser.add_argument("--retrieval-steps", type=_positive_int, default=TrainingBudget.retrieval_steps,
                        help="retrieval training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the training and the users")
    parser.add_argument("--drain-timeout", type=POSITIVE, default=300.0,
                        help="seconds to wait, after the traffic, for the analytics consumer to store "
                             "every event (it usually takes a few); past it the report is built from what it "
                             "stored, and the run says how many records were left")  # fmt: skip
    parser.add_argument("--serve", choices=("auto", "yes", "no"), default="auto",
                        help="keep the dashboard up until Ctrl-C (auto: when run from a terminal)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return parser


_STOPS: list[type[Interrupted]] = []
"""The stops SIGINT and SIGTERM asked for, in order (see ``_raise_interrupted``)."""


def _step(number: int, text: str) -> None:
    _raise_if_stopped()
    print(f"\n[{number}/6] {text}", flush=True)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """The signal handler: stop now. Python runs it between two bytecodes of the main thread, and when those
    belong to a finalizer (``__del__``, a weakref callback: garbage collected during training) the exception
    is printed as "Exception ignored" and lost; the stop is also recorded, so that the next step raises it
    (``_raise_if_stopped``) instead of the demo running to its end."""
    stop = Terminated if signum == signal.SIGTERM else Interrupted
    _STOPS.append(stop)
    raise stop


def _raise_if_stopped() -> None:
    """Raise the last stop a signal asked for, if any: it was lost on its way (``_raise_interrupted``)."""
    if _STOPS:
        raise _STOPS[-1]


def _clear_workdir(workdir: Path) -> None:
    """Start from an empty ``workdir``, deleting only what a demo wrote: a folder it marked, the default one
    (the project's own .data), or an empty one; anything else is refused (``--workdir ~`` deleted a home)."""
    if workdir.exists():
        if not workdir.is_dir():
            raise WorkdirError(f"--workdir {workdir} is a file, not a folder")
        ours = (workdir / WORKDIR_MARKER).is_file() or workdir == DEFAULT_WORKDIR.resolve()
        if not ours and any(workdir.iterdir()):
            raise WorkdirError(
                f"--workdir {workdir} holds files the demo did not write, and each run empties its workdir: "
                "name a new or empty folder"
            )
        for entry in workdir.iterdir():  # the folder itself stays: it is what _claimed_workdir locks
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / WORKDIR_MARKER).write_text(
        f"python -m deploy.demo (pid {os.getpid()}) wrote this folder and empties it on every run\n"
    )


@contextlib.contextmanager
def _claimed_workdir(workdir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``workdir`` while a run uses it: a second run there emptied it under the
    first one's servers and store, and both broke. The kernel drops the lock when the process ends, however it
    ends, so a killed run leaves nothing stale behind."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = re.search(r"\(pid \d+\)", _read_or_empty(workdir / WORKDIR_MARKER))
        raise WorkdirError(
            f"--workdir {workdir} is in use by another demo run{' ' + owner.group(0) if owner else ''}: "
            "wait for it to end (or stop it), or name another --workdir"
        ) from None
    try:
        yield
    finally:
        os.close(fd)


def _read_or_empty(path: Path) -> str:
    """``path``'s text, or "" when it cannot be read: only to enrich a message, never to fail it."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _servable_experiments(experiments: Path, repository: Path, workdir: Path) -> Path:
    """``experiments``, or a copy in ``workdir`` without the task weights its ranking models lack.

    The demo configs weigh the synthetic world's tasks (``click``, ``rating``); the ego-Facebook models learn
    ``click`` and ``connect``, and the ranker refuses a weight for a task its model lacks. Dropping ``rating``
    there orders the feed by P(click), as the README describes; the copy says what it dropped.
    """
    data = yaml.safe_load(experiments.read_text(encoding="utf-8"))
    tasks_of = repository_tasks(repository)
    dropped: set[str] = set()

    def fit(node: object) -> None:  # every payload in the YAML tree: the defaults' and the variations'
        if isinstance(node, list):
            for value in node:
                fit(value)
        elif isinstance(node, dict):
            weights = node.get("task_weights")
            if isinstance(weights, dict):
                tasks = tasks_of(str(node.get("model_name")), str(node.get("model_version")))
                if tasks is not None:
                    dropped.update(set(weights) - set(tasks))
                    node["task_weights"] = {k: v for k, v in weights.items() if k in tasks}
            for value in node.values():
                fit(value)

    fit(data)
    if not dropped:
        return experiments
    served = workdir / "experiments.yaml"
    note = f"# {experiments} without task weights for {sorted(dropped)}: tasks these models do not have\n"
    served.write_text(note + yaml.safe_dump(data, sort_keys=False))
    print(f"  task weights for {', '.join(sorted(dropped))} dropped (not tasks of these models): serving {served}")
    return served


def run(args: argparse.Namespace, hold: contextlib.ExitStack | None = None) -> dict:
    """The whole demo; returns the summary it also writes to ``<workdir>/summary.json``.

    The workdir stays claimed until ``hold`` closes (``main``: while the dashboard serves its store), by
    default until the run ends."""
    with contextlib.ExitStack() as own:
        return _run(args, own if hold is None else hold)


def _run(args: argparse.Namespace, hold: contextlib.ExitStack) -> dict:
    """``run`` with the workdir claimed in ``hold``."""
    started = time.perf_counter()
    default = "aa.yaml" if args.aa else "interleaving.yaml" if args.interleaving else "ab.yaml"
    experiments = args.experiments or HERE / default
    router = Router.from_file(experiments)  # fail fast on bad configs, before any training
    analysis = load_analysis_config(args.metrics)
    workdir: Path = args.workdir.resolve()
    hold.enter_context(_claimed_workdir(workdir))
    _clear_workdir(workdir)
    repository = workdir / "repository"
    repository.mkdir(parents=True)

    world = make_world(args.data, args.users, args.seed)  # before training: a bad data path fails fast
    users = world.simulated_users(args.users, args.seed)
    _step(1, "training and exporting the models (ranking: MMoE, MMoE + DML; retrieval: GAT, SSMTL) on "
             + (f"ego-Facebook ({args.data})" if args.data else "the synthetic world"))
    budget = TrainingBudget(
        impressions=args.impressions, ranking_epochs=args.ranking_epochs, retrieval_steps=args.retrieval_steps, seed=args.seed
    )
    offline = {**train_retrieval(world, repository, budget), **train_ranking(world, repository, budget)}
    for name, metrics in offline.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"  {name} v{VERSION}: {shown}")

    experiments = _servable_experiments(experiments, repository, workdir)

    _step(2, "starting Kafka (embedded broker), retrieval server, ranker server, analytics consumer")
    store_path = workdir / "events"
    with (
        EmbeddedBroker(topics=(EXPOSURES, OUTCOMES), data_dir=workdir / "kafka") as broker,
        Stack(workdir / "logs", watch=True) as stack,
    ):
        print(f"  Kafka at {broker.bootstrap}")
        stack.watch("the Kafka broker", lambda: None if broker.running else "exited", broker.stderr_tail)
        retrieval_port, ranker_port = free_port(), free_port()
        retrieval_args = ["--repository", str(repository), "--port", str(retrieval_port), "--metrics-port", "0"]
        for name in RETRIEVAL_MODELS:
            retrieval_args += ["--model", f"{name}:{VERSION}"]
        if world.exclude_friends:
            retrieval_args.append("--exclude-neighbors")
        retrieval = stack.start("retrieval_server", "retrieval_server", retrieval_args)
        ranker = stack.start("ranker_server", "ranker_server", [
            "--repository", str(repository), "--experiments", str(experiments), "--port", str(ranker_port),
            "--retrieval", f"127.0.0.1:{retrieval_port}", "--retrieve-k", str(args.retrieve_k),
            "--kafka", broker.bootstrap, "--exposure-topic", EXPOSURES,
        ])
        consumer = stack.start("analytics_consumer", "analytics.consumer", [
            "--bootstrap", broker.bootstrap, "--store", str(store_path), "--group", CONSUMER_GROUP,
            "--exposures-topic", EXPOSURES, "--outcomes-topic", OUTCOMES, "--session-timeout-ms", "6000",
        ])
        stack.wait_healthy(retrieval, f"127.0.0.1:{retrieval_port}")
        stack.wait_healthy(ranker, f"127.0.0.1:{ranker_port}")
        print(f"  retrieval at 127.0.0.1:{retrieval_port}, ranker at 127.0.0.1:{ranker_port}; logs in {stack.log_dir}")

        _step(3, f"simulating {len(users)} users x {args.requests_per_user} feeds (ground truth decides clicks)")
        config = SimulationConfig(
            users=len(users), requests_per_user=args.requests_per_user, candidates_per_request=0,
            top_k=args.top_k, concurrency=args.concurrency, seed=args.seed,
        )
        with grpc.insecure_channel(f"127.0.0.1:{ranker_port}") as channel, OutcomeClient(
            broker.bootstrap, journal_path=workdir / "outcomes.journal"
        ) as outcomes:
            simulator = UserSimulator(world, ranking_pb2_grpc.RankerStub(channel), outcomes, config, user_id=str)
            summary = simulator.run(users)
            if not outcomes.flush(60):
                raise StackError("outcome events were not all acknowledged by Kafka within 60 s")
        print(f"  {summary.requests} feeds, {summary.failed_requests} failed, {summary.impressions} impressions, "
              f"{summary.clicks} clicks")

        _step(4, "draining: the ranker flushes its exposures, the consumer persists every event")
        drain_started = time.perf_counter()
        stack.stop_service(ranker)  # a graceful stop: its exposures are all in Kafka when it has exited
        consumer_rc: list[int] = []  # a graceful stop too: it stores what it read, commits, and exits
        drain = drain_consumer(broker.bootstrap, (EXPOSURES, OUTCOMES), CONSUMER_GROUP, args.drain_timeout,
                               lambda: consumer_rc.append(stack.stop_service(consumer)))  # fmt: skip
        if consumer_rc != [0]:  # raised after the drain's figures: they say what a killed consumer stored
            raise StackError(f"analytics consumer exited with {consumer_rc[0]}:\n{consumer.log_tail()}")
        drain_seconds = round(time.perf_counter() - drain_started, 1)
    with DuckDBEventStore(store_path) as store:
        persisted = store.counts()
        expected_outcomes = summary.impressions + summary.clicks + summary.top_clicks
        print(f"  persisted {persisted['outcomes']} of {expected_outcomes} outcomes, "
              f"{persisted['exposed_users']} (user, experiment) exposures")

        _step(5, "reports (A/B tests, and interleaving: which ranker users prefer when they see both)")
        report_dir = workdir / "report"
        report_dir.mkdir()
        reports = {}
        for key in router.experiment_keys:
            report = build_report(store, analysis, key).to_dict()
            print(format_report_table(report) + "\n")
            (report_dir / f"{key}.json").write_text(json.dumps(report, indent=2, allow_nan=False))
            reports[key] = report

    result = {
        "world": str(args.data) if args.data else "synthetic",
        "experiments_config": str(experiments),
        "offline_metrics": offline,
        "simulation": summary.__dict__,
        "persisted": persisted,
        "expected_outcomes": expected_outcomes,
        "drain": {**drain.to_dict(), "seconds": drain_seconds},
        "reports": {k: str(report_dir / f"{k}.json") for k in reports},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (workdir / "summary.json").write_text(json.dumps(result, indent=2))
    _step(6, f"done in {result['wall_seconds']:.0f} s; reports in {report_dir}, summary in {workdir / 'summary.json'}")
    return result


def serve_dashboard(store_path: Path, metrics: Path, wait: bool) -> None:
    """Show the dashboard's address; keep serving until Ctrl-C when ``wait``."""
    command = f"python -m analytics serve --store {store_path} --metrics {metrics} --port 8080"
    if not wait:
        print(f"Dashboard: run `{command}` and open http://127.0.0.1:8080")
        return
    with DuckDBEventStore(store_path) as store, AnalyticsServer(store, load_analysis_config(metrics), port=0) as server:
        print(f"Dashboard at {server.url}/ (Ctrl-C to stop; later: `{command}`)", flush=True)
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _STOPS.clear()  # a run of its own, also when called again in one process (tests)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # else ignored by the caller, so by us
        signal.signal(signal.SIGINT, _raise_interrupted)
    torch.set_num_threads(1)  # small models: one thread is fastest, and leaves the other core to the servers
    try:
        with contextlib.ExitStack() as hold:  # the workdir stays ours while the dashboard serves its store
            run(args, hold)
            wait = args.serve == "yes" or (args.serve == "auto" and sys.stdin.isatty())
            serve_dashboard(args.workdir.resolve() / "events", args.metrics, wait)
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted; every process the demo started has been stopped; what it wrote is in "
              f"{args.workdir.resolve()} (the next run empties it)", file=sys.stderr)  # fmt: skip
        return 143 if isinstance(interrupt, Terminated) else 130
    except (StackError, BrokerError, DrainError) as error:
        # a server or the broker failed to start, or died during the run: its own last lines say why
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (DataError, ConfigError, AnalyticsError, WorkdirError) as error:
        # a missing or corrupt --data, --experiments or --metrics file, a --workdir it would not empty
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
