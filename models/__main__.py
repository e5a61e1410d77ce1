"""`python -m models train|evaluate|export`: train with early stopping over seeds, evaluate a checkpoint on
its test split, export a checkpoint to a model package."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

import models  # noqa: F401  (populates the registry)
from models.data import LOADERS, load_dataset
from models.errors import ModelsError
from models.evaluate import evaluate_model, markdown_table
from models.export import export_package
from models.layers import FeatureSpec
from models.registry import UnknownModelError, list_models, model_kind
from models.train import (
    STATE_DIR,
    TrainConfig,
    has_training_state,
    load_checkpoint,
    resolve_device,
    run_training,
)


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses (``n_experts=4``, ``expert_dims=[64,32]``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _config_default(field: str) -> str:
    """TrainConfig's default for ``field``: what a train flag given neither on the command line nor in
    ``--config`` falls back to (the flags themselves default to None so that the file can set them)."""
    value = TrainConfig.model_fields[field].get_default(call_default_factory=True)
    shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"(default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch's validation metrics")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)

    about = "train one model over one or more seeds"
    train = sub.add_parser(
        "train",
        help=about,
        description=f"{about}: early stopping on validation, test metrics of the best epoch, mean/std",
        epilog="Defaults are TrainConfig's; --config sets any TrainConfig key and flags override it.",
    )
    train.add_argument("--config", type=Path, help="YAML file with TrainConfig keys; flags override it")
    ranking = [name for name in list_models() if model_kind(name) == "ranking"]
    train.add_argument("--model", help=f"registry name of a ranking model; one of: {', '.join(ranking)}")
    train.add_argument("--dataset", help=f"{' | '.join(LOADERS)} {_config_default('dataset')}")
    train.add_argument("--data", help="path of the data directory (synthetic and multiflow need none)")
    train.add_argument("--preset", choices=["default", "tiny"],
                       help=f"the papers' model sizes or tiny ones {_config_default('preset')}")  # fmt: skip
    train.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                       help="model config override, repeatable")  # fmt: skip
    train.add_argument("--max-epochs", type=int, help=f"most epochs per seed {_config_default('max_epochs')}")
    train.add_argument("--patience", type=int, help="epochs without validation improvement before stopping "
                       f"{_config_default('patience')}")  # fmt: skip
    batch = "training rows per mini-batch, 2 or more for a model with BatchNorm (grec with dense features)"
    train.add_argument("--batch-size", type=int, help=f"{batch} {_config_default('batch_size')}")
    train.add_argument("--lr", type=float, help=f"Adam learning rate {_config_default('lr')}")
    train.add_argument("--seeds", type=int, nargs="+", help=f"one run per seed {_config_default('seeds')}")
    train.add_argument("--split-seed", type=int, help=f"seed of the split {_config_default('split_seed')}")
    train.add_argument("--device", choices=["cpu", "cuda"],
                       help=f"train on the CPU or a GPU {_config_default('device')}")  # fmt: skip
    train.add_argument("--max-steps-per-epoch", type=int, help="most mini-batches per epoch (default: all)")
    train.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    train.add_argument("--output", type=Path, help="write config, checkpoints, results.json/.md here, and "
                       f"the state after every epoch under {STATE_DIR}/ until they are written")  # fmt: skip
    train.add_argument("--resume", action="store_true", help=f"continue the run whose {STATE_DIR}/ is in "
                       "--output (killed or interrupted), with the same config, to the result of a run never "
                       "stopped (bit for bit on CPU)")  # fmt: skip

    about = "test metrics of a checkpoint"
    evaluate = sub.add_parser("evaluate", help=about, description=about)
    evaluate.add_argument("checkpoint", type=Path, help="checkpoint.pt written by train --output")
    evaluate.add_argument("--data", help="override the data path stored in the checkpoint")
    evaluate.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                          help="evaluate on the CPU or a GPU (default: cpu)")  # fmt: skip

    about = "write a model package from a checkpoint"
    export = sub.add_parser("export", help=about, description=f"{about}: <repository>/<name>/<version>/")
    export.add_argument("checkpoint", type=Path, help="checkpoint.pt written by train --output")
    export.add_argument("--repository", type=Path, required=True, help="model repository root")
    export.add_argument("--name", required=True, help="model name (one folder name)")
    export.add_argument("--version", required=True, help="version (one folder name, e.g. 1)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    return parser


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config is not None:
        if not args.config.exists():
            raise ModelsError(f"config file {args.config} not found")
        try:
            loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelsError(f"cannot read config file {args.config}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{args.config}:{mark.line + 1}" if mark is not None else str(args.config)
            raise ModelsError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(loaded, dict):
            raise ModelsError(f"{args.config}: top level must be a mapping of TrainConfig keys")
        values.update(loaded)
    flags = {
        "model": args.model, "dataset": args.dataset, "data": args.data, "preset": args.preset,
        "max_epochs": args.max_epochs, "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
        "seeds": args.seeds, "split_seed": args.split_seed, "device": args.device,
        "max_steps_per_epoch": args.max_steps_per_epoch,
    }  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.option:
        values["model_options"] = {**values.get("model_options", {}), **dict(args.option)}
    if args.no_progress:
        values["progress"] = False
    if "model" not in values:
        raise ModelsError("train needs --model (or 'model' in --config)")
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        where = f"{args.config}: " if args.config else ""
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelsError(f"{where}invalid training config: {details}") from None


def _require_trained_columns(trained: FeatureSpec, data: FeatureSpec, where: str | None) -> None:
    """Other columns (``--data`` of another variant, e.g. ML-100k's 19 genres for an ML-1M checkpoint's 18)
    fail deep inside the model with a shape error."""
    want = [*trained.sparse_names, *trained.dense_names]
    have = [*data.sparse_names, *data.dense_names]
    if (data.sparse_names, data.dense_names) != (trained.sparse_names, trained.dense_names):
        missing, extra = [c for c in want if c not in have], [c for c in have if c not in want]
        raise ModelsError(
            f"{where}: its columns differ from the checkpoint's: missing {missing}, unexpected {extra}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"argument --threads: expected a positive integer, got {args.threads}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            config = _train_config(args)
            if args.output is not None and args.output.exists() and not args.output.is_dir():
                raise ModelsError(f"--output {args.output} is a file, not a folder")  # before hours of training
            report = run_training(config, args.output, args.resume)
            print(markdown_table(report["config"]["model"], report["summary"]), end="")
        elif args.command == "evaluate":
            model, payload = load_checkpoint(args.checkpoint)
            config = TrainConfig(**payload["config"])
            data = args.data or config.data
            splits = load_dataset(config.dataset, data, config.split_seed, config.embedding_dim)
            _require_trained_columns(FeatureSpec.coerce(payload["features"]), splits.test.features, data)
            device = resolve_device(args.device)
            print(json.dumps(evaluate_model(model.to(device), splits.test, device), indent=2))
        else:
            model, payload = load_checkpoint(args.checkpoint)
            target = export_package(
                model,
                args.repository,
                args.name,
                args.version,
                family=payload["config"]["model"],
                features=payload["manifest_features"],
                training_config=payload["config"],
                metrics=payload["metrics"],
                item_features=payload["item_features"],
                overwrite=args.overwrite,
                dynamo=args.dynamo,
            )
            print(target)
    except (ModelsError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command != "train":
            raise
        print(_interrupted(args.output, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    return 0


def _interrupted(output: Path | None, argv: list[str]) -> str:
    """What a Ctrl-C'd training run kept, and the command that continues it."""
    if output is None:
        return "interrupted: nothing kept (with --output, a run keeps its state after every epoch)"
    again = ["python", "-m", "models", *argv, *([] if "--resume" in argv else ["--resume"])]
    kept = (
        f"{output / STATE_DIR} holds the state after the last finished epoch"
        if has_training_state(output)
        else "no epoch had finished, so the run starts over"
    )
    return f"interrupted: {kept}; continue with: {shlex.join(again)}"


if __name__ == "__main__":
    sys.exit(main())
