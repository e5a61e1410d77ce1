"""The gates' expert mixture in exported graphs: batched MatMul (models.layers.Gate) against the Einsum it replaced.

Exports bench_ranker's MMoE and a PLE of the same sizes twice, once with ``Gate`` as it is and once with the
former ``torch.einsum("be,bed->bd", ...)`` mixture, checks that ONNX Runtime gives the same logits from both,
then times ``session.run`` on 500 candidates in interleaved rounds with the ranker's thread settings (intra-op 2,
inter-op 1, threads spinning during runs). Prints the median per graph and the ratio einsum / matmul.

    nice .venv/bin/python benchmarks/bench_gate_mixture.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ranker as br  # noqa: E402

from models import create_model  # noqa: E402
from models.layers import Gate  # noqa: E402


def einsum_mixture(gate: Gate, x: Tensor, expert_outputs: Tensor) -> Tensor:
    """The mixture as Gate computed it before (the reference this benchmark compares against)."""
    return torch.einsum("be,bed->bd", torch.softmax(gate.proj(x), dim=-1), expert_outputs)


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "mmoe":
        return br.build_model()
    sizes = {"expert_dims": (256, 128), "tower_dims": (128, 64)}
    return create_model(family, features=br.FEATURES, tasks=list(br.TASKS), **sizes).eval()


def exported(model: torch.nn.Module, root: Path, name: str, mixture: str) -> ort.InferenceSession:
    """A session on ``model`` exported with the gates' ``mixture`` ("matmul": Gate as it is, or "einsum")."""
    current = Gate.forward
    if mixture == "einsum":
        Gate.forward = einsum_mixture  # type: ignore[method-assign]
    try:
        path = br.write_package(model, root, name) / "model.onnx"
    finally:
        Gate.forward = current  # type: ignore[method-assign]
    einsums = sum(node.op_type == "Einsum" for node in onnx.load(path).graph.node)
    if (einsums > 0) != (mixture == "einsum"):
        raise SystemExit(f"{name}: {einsums} Einsum nodes in the graph exported with the {mixture} mixture")
    return br.ort_session(path, 2, "during runs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", choices=["mmoe", "ple"], default=["mmoe", "ple"])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=10, help="calls per graph per round")
    parser.add_argument("--candidates", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.candidates
    sparse = np.stack([rng.integers(0, v, n) for v in br.USER_VOCABS + br.ITEM_VOCABS], axis=1).astype(
        np.int64
    )
    feeds = {
        "sparse": sparse,
        "dense": rng.normal(size=(n, br.USER_DENSE + br.ITEM_DENSE)).astype(np.float32),
    }
    sessions: dict[str, ort.InferenceSession] = {}
    with tempfile.TemporaryDirectory(prefix="gate-mixture-") as tmp:
        for family in args.families:
            model = build(family)
            for form in ("matmul", "einsum"):
                sessions[f"{family} {form}"] = exported(model, Path(tmp), f"{family}-{form}", form)
            a, b = (sessions[f"{family} {form}"].run(None, feeds)[0] for form in ("matmul", "einsum"))
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            print(f"{family}: logits of the two graphs agree (max |diff| {np.abs(a - b).max():.2e})")
    results = {name: br.Result(name) for name in sessions}
    names = list(sessions)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            br.timed(results[name], lambda s=sessions[name]: s.run(None, feeds), args.calls)
    p50 = {name: result.p50_ms for name, result in results.items()}
    for name, ms in p50.items():
        print(f"{name:14s} p50 {ms:.3f} ms")
    for family in args.families:
        ratio = p50[f"{family} einsum"] / p50[f"{family} matmul"]
        print(f"{family}: einsum / matmul = {ratio:.2f}")


if __name__ == "__main__":
    main()
