"""The measurement that led to Rank's factored graphs (serving_peers.md): Rank's one user per request, used
inside the graph. "Items precomputed" is now built (models/factored.py writes the graphs for every family whose
features feed only Linears, ranker_server/factored.py computes the item parts at load); this record keeps the
hand-written MMoE version it was first measured with, and "user once", which was not built.

The first layers of bench_ranker's MMoE (every expert's first Linear and every gate) are linear in the
concatenated features ``x = [user columns, item columns]``, so ``x W = x_user W_user + x_item W_item``. A Rank
request has one user and many candidates, which allows two exact rewrites that a generic ModelInfer cannot make:

* "user once": ``x_user W_user + b`` computed once per request and broadcast to its rows by a segment index;
  item rows carry only item columns (no memory cost).
* "items precomputed": ``x_item W_item`` for every item of the table computed at load time (20,000 x 1,036 floats,
  83 MB here), gathered by row index; the request computes only its users' part.

Both are exported from torch beside the package's own graph, checked against it through ONNX Runtime, and timed
with the ranker's thread settings: one request of 500 candidates with threads spinning during runs (wall p50),
and four requests batched (2,000 rows, threads sleeping; wall and process CPU per run, as at concurrency 16).

    .venv/bin/python benchmarks/results/tried/first_layer_factoring.py
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_ranker as br  # noqa: E402

USER_COLS = list(range(0, 32)) + list(range(64, 68))  # user id and segment embeddings, user dense
ITEM_COLS = list(range(32, 64)) + list(range(68, 72))  # item id and category embeddings, item dense


class _Rest(nn.Module):
    """The MMoE above its first layers, from one pre-activation per expert and per gate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def rest(self, pre: list[Tensor]) -> Tensor:
        n_experts = len(self.model.experts)
        experts = torch.stack(
            [expert.net[2:](torch.relu(p)) for expert, p in zip(self.model.experts, pre, strict=False)], 1
        )
        mixed = [(torch.softmax(p, -1).unsqueeze(1) @ experts).squeeze(1) for p in pre[n_experts:]]
        return self.model.task_towers(torch.stack(mixed, 1))

    def user_part(self, user_sparse: Tensor, user_dense: Tensor) -> Tensor:
        tables = self.model.embedding.tables
        return torch.cat([tables[0](user_sparse[:, 0]), tables[1](user_sparse[:, 1]), user_dense], 1)


def first_layers(model: nn.Module) -> tuple[Tensor, Tensor, list[int]]:
    layers = [expert.net[0] for expert in model.experts] + [gate.proj for gate in model.gates]
    weight = torch.cat([layer.weight for layer in layers]).T.contiguous()  # [72, K]
    return weight, torch.cat([layer.bias for layer in layers]), [layer.out_features for layer in layers]


class UserOnce(_Rest):
    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        weight, bias, self.widths = first_layers(model)
        self.w_user, self.w_item, self.bias = weight[USER_COLS], weight[ITEM_COLS], bias

    def forward(
        self,
        user_sparse: Tensor,
        user_dense: Tensor,
        item_sparse: Tensor,
        item_dense: Tensor,
        segment: Tensor,
    ) -> Tensor:
        tables = self.model.embedding.tables
        items = torch.cat([tables[2](item_sparse[:, 0]), tables[3](item_sparse[:, 1]), item_dense], 1)
        users = self.user_part(user_sparse, user_dense) @ self.w_user + self.bias
        return self.rest(list(torch.split(items @ self.w_item + users[segment], self.widths, 1)))


class ItemsPrecomputed(_Rest):
    def __init__(self, model: nn.Module, items_sparse: Tensor, items_dense: Tensor) -> None:
        super().__init__(model)
        weight, bias, widths = first_layers(model)
        tables = model.embedding.tables
        items = torch.cat([tables[2](items_sparse[:, 0]), tables[3](items_sparse[:, 1]), items_dense], 1)
        self.tables = [t.contiguous() for t in torch.split(items @ weight[ITEM_COLS], widths, 1)]
        self.w_users = [w.contiguous() for w in torch.split(weight[USER_COLS], widths, 1)]
        self.biases = list(torch.split(bias, widths))

    def forward(self, user_sparse: Tensor, user_dense: Tensor, rows: Tensor, segment: Tensor) -> Tensor:
        users = self.user_part(user_sparse, user_dense)
        pre = [
            t[rows] + (users @ w + b)[segment]
            for t, w, b in zip(self.tables, self.w_users, self.biases, strict=True)
        ]
        return self.rest(pre)


def export(module: nn.Module, feeds: dict[str, np.ndarray], path: Path) -> Path:
    axes = {name: {0: "users" if name.startswith("user") else "rows"} for name in feeds} | {
        "logits": {0: "rows"}
    }
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(feeds),
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return path


def feeds_for(
    users: int, candidates: int, items_sparse: np.ndarray, items_dense: np.ndarray, rng: np.random.Generator
) -> dict[str, dict[str, np.ndarray]]:
    user_sparse = np.stack([rng.integers(1, v, users) for v in br.USER_VOCABS], 1).astype(np.int64)
    user_dense = rng.normal(size=(users, br.USER_DENSE)).astype(np.float32)
    rows = rng.integers(0, len(items_sparse), users * candidates)
    segment = np.repeat(np.arange(users), candidates)
    full = {
        "sparse": np.concatenate([user_sparse[segment], items_sparse[rows]], 1),
        "dense": np.concatenate([user_dense[segment], items_dense[rows]], 1),
    }
    user_once = {
        "user_sparse": user_sparse,
        "user_dense": user_dense,
        "item_sparse": items_sparse[rows],
        "item_dense": items_dense[rows],
        "segment": segment,
    }
    precomputed = {"user_sparse": user_sparse, "user_dense": user_dense, "rows": rows, "segment": segment}
    return {"package graph": full, "user once": user_once, "items precomputed": precomputed}


def timed(
    sessions: dict[str, ort.InferenceSession],
    feeds: dict[str, dict[str, np.ndarray]],
    rounds: int,
    calls: int,
) -> dict[str, tuple[float, float]]:
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(calls):
                sess.run(None, feeds[name])
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            wall[name].append(seconds / calls)
            cpu[name].append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / calls)
    return {
        name: (float(np.median(wall[name])) * 1e3, float(np.median(cpu[name])) * 1e3) for name in sessions
    }


def main() -> None:
    torch.set_num_threads(1)
    model = br.build_model()
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    items_sparse = np.stack([rng.integers(1, v, br.N_ITEMS) for v in br.ITEM_VOCABS], 1).astype(np.int64)
    items_dense = rng.normal(size=(br.N_ITEMS, br.ITEM_DENSE)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="factoring-") as tmp:
        root = Path(tmp)
        one, four = (
            feeds_for(1, 500, items_sparse, items_dense, rng),
            feeds_for(4, 500, items_sparse, items_dense, rng),
        )
        paths = {
            "package graph": br.write_package(model, root) / "model.onnx",
            "user once": export(UserOnce(model), one["user once"], root / "user_once.onnx"),
            "items precomputed": export(
                ItemsPrecomputed(model, torch.from_numpy(items_sparse), torch.from_numpy(items_dense)),
                one["items precomputed"],
                root / "precomputed.onnx",
            ),
        }
        for label, feeds, spin in (
            ("1 request x 500, spinning", one, True),
            ("4 requests x 500, sleeping", four, False),
        ):
            spinning = "during runs" if spin else "off"
            sessions = {name: br.ort_session(path, 2, spinning) for name, path in paths.items()}
            reference = sessions["package graph"].run(None, feeds["package graph"])[0]
            for name, sess in sessions.items():
                np.testing.assert_allclose(sess.run(None, feeds[name])[0], reference, rtol=1e-4, atol=1e-5)
            result = timed(sessions, feeds, rounds=30, calls=10 if spin else 5)
            base_wall, base_cpu = result["package graph"]
            print(f"{label} (answers equal to the package graph's):")
            for name, (wall, cpu) in result.items():
                print(
                    f"  {name:18s} wall p50 {wall:.3f} ms ({wall / base_wall:.2f}x)  CPU {cpu:.3f} ms ({cpu / base_cpu:.2f}x)"
                )


if __name__ == "__main__":
    main()
