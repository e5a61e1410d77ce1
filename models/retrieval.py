"""Command line for the graph retrieval models (SSMTL and its retrieval-only baseline).

    python -m models.retrieval train    --out ckpt.pt [--baseline] [--steps N] [--seed S] [--set beta=0.01 ...]
    python -m models.retrieval evaluate --checkpoint ckpt.pt [--part test]
    python -m models.retrieval export   --checkpoint ckpt.pt --repository REPO --name NAME --version V
    python -m models.retrieval index    --package REPO/NAME/V

`export` writes a complete package (ONNX encoder, golden file, graph store, index, manifest), in place only
once it is whole and over an existing version only with `--overwrite`; `index` re-embeds every node of an
existing package with its ONNX encoder (the batch job after a graph refresh).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from grpc_serving import HelpFormatter
from models.errors import ModelsError
from models.graph.export import build_index, write_package
from models.graph.training import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train

logger = logging.getLogger(__name__)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML scalars) into SSMTLConfig overrides."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.retrieval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()

    p = sub.add_parser(
        "train",
        help="train SSMTL (or the retrieval-only baseline) on ego-Facebook",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument(
        "--dataset",
        choices=["ego-facebook", "synthetic"],
        default=defaults.dataset,
        help="the SNAP ego-Facebook graph (--data-path), or a generated graph for trials",
    )
    p.add_argument(
        "--data-path", default=defaults.data_path, help="folder with facebook_combined.txt and ego/"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="model and edge-split seed")
    p.add_argument("--steps", type=int, default=defaults.steps, help="training steps (batches)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="positive pairs per step")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    p.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="steps between validation Recall@50 evaluations (the best one is kept)",
    )
    p.add_argument(
        "--split",
        choices=["random", "cold-start"],
        default=defaults.split,
        help="random edge split, or the same plus --cold-users users that keep at most 10 friendships",
    )
    p.add_argument(
        "--cold-users", type=int, default=defaults.cold_users, help="cold-start users of --split cold-start"
    )
    p.add_argument("--baseline", action="store_true", help="retrieval loss only (beta = gamma = 0)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. beta=0.01 gamma=0.1 embed_dim=64",
    )

    p = sub.add_parser("evaluate", help="Recall@10/50/100, MRR, NDCG@50 on held-out edges, by degree")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train --out")
    p.add_argument(
        "--part", choices=["val", "test"], default="test", help="held-out edges to rank (default: test)"
    )

    p = sub.add_parser("export", help="write a model package (ONNX, golden, index, manifest)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train --out")
    p.add_argument("--repository", required=True, help="model repository root (<root>/<name>/<version>/)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--version", required=True, help="version to write (refused if it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace the version if it exists")

    p = sub.add_parser("index", help="re-embed every node of a package with its ONNX encoder")
    p.add_argument("--package", required=True, help="REPOSITORY/NAME/VERSION")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except ModelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        folder = Path(args.out).parent
        if not folder.is_dir():  # found before training, not after it
            raise ModelsError(f"cannot write checkpoint {args.out}: folder {folder} does not exist")
        model = _overrides(args.set)
        if args.baseline:
            model |= {"beta": 0.0, "gamma": 0.0}
        config = TrainConfig(
            dataset=args.dataset,
            data_path=args.data_path,
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            split=args.split,
            cold_users=args.cold_users,
            model=model,
        )
        result = train(config)
        save_checkpoint(result, args.out)
        print(json.dumps(evaluate(result, "val")["overall"], indent=2))
    elif args.command == "evaluate":
        print(json.dumps(evaluate(load_checkpoint(args.checkpoint), args.part), indent=2))
    elif args.command == "export":
        result = load_checkpoint(args.checkpoint)
        overall = evaluate(result, "test")["overall"]
        metrics = {f"test/{k}": v for k, v in overall.items() if k != "users"}
        print(write_package(result, args.repository, args.name, args.version, metrics, args.overwrite))
    else:
        build_index(args.package, progress=True)


if __name__ == "__main__":
    sys.exit(main())
