"""ANN vs exact search (recall@100 and single-query throughput) and end-to-end Retrieve latency through gRPC.

Part 1, in one run and on the same queries: exact inner-product search (the server's ``ExactIndex``: one
matrix-vector product + partial sort; faiss ``IndexFlatIP`` for reference) against hnswlib HNSW, faiss HNSW,
faiss IVF-Flat and usearch HNSW over (a) the ego-Facebook embeddings of a model package and (b) 1M random
L2-normalised 64-d vectors. Every query runs alone on one thread (as in the server). For each library the table
shows the parameter sweep; the verdict picks the fastest setting with recall@100 >= 0.95.
Part 2: ``python -m retrieval_server`` in a subprocess over the package, Retrieve(k=100) at concurrency 1 and 16
(known users, and unseen users embedded on the fly), p50/p99 latency and requests/s.

    nice -n 10 python benchmarks/bench_retrieval.py --package artifacts/repository/ssmtl/1
Results: benchmarks/results/retrieval.md (+ .json), rewritten after every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval_server.index import ExactIndex

logger = logging.getLogger("bench_retrieval")
RESULTS = Path(__file__).parent / "results"
K = 100
TARGET_RECALL = 0.95


def normalised(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def ground_truth(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids per query (batched, only for scoring the recall)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ corpus.T
        out[start : start + 64] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def timed_queries(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[np.ndarray, float]:
    """Run queries one at a time; returns the results and queries per second."""
    started = time.perf_counter()
    found = [search(q) for q in queries]
    qps = len(queries) / (time.perf_counter() - started)
    return np.stack([np.pad(f[:K], (0, max(0, K - len(f))), constant_values=-1) for f in found]), qps


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)])
    )


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def candidates(dim: int, n: int, threads: int, m: int = 16, ef_construction: int = 100
               ) -> dict[str, tuple[Callable, list, Callable]]:
    """library -> (build(corpus) -> index, sweep values, search(index, value) -> query fn)."""

    def hnswlib_build(corpus):
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=ef_construction, M=m)
        index.set_num_threads(threads)
        index.add_items(corpus)
        index.set_num_threads(1)
        return index

    def hnswlib_search(index, ef):
        index.set_ef(ef)
        return lambda q: index.knn_query(q[None], k=K)[0][0]

    def faiss_hnsw_build(corpus):
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(corpus)
        faiss.omp_set_num_threads(1)
        return index

    def faiss_hnsw_search(index, ef):
        index.hnsw.efSearch = ef
        return lambda q: index.search(q[None], K)[1][0]

    def faiss_ivf_build(corpus):
        import faiss

        faiss.omp_set_num_threads(threads)
        nlist = max(16, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = corpus[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)]
        index.train(sample)
        index.add(corpus)
        faiss.omp_set_num_threads(1)
        return index

    def faiss_ivf_search(index, nprobe):
        index.nprobe = nprobe
        return lambda q: index.search(q[None], K)[1][0]

    def usearch_build(corpus):
        from usearch.index import Index

        index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction)
        index.add(np.arange(n), corpus, threads=threads)
        return index

    def usearch_search(index, ef):
        index.expansion_search = ef
        return lambda q: index.search(q, K, threads=1).keys

    def faiss_pq_build(corpus):
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.index_factory(dim, f"PQ{dim // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
        index.train(corpus[: min(n, 100_000)])
        index.add(corpus)
        faiss.omp_set_num_threads(1)
        return index

    def faiss_pq_search(index, k_factor):
        import faiss

        faiss.downcast_index(index).k_factor = k_factor
        return lambda q: index.search(q[None], K)[1][0]

    ivf_lists = max(16, int(4 * np.sqrt(n)))
    probes = sorted({max(1, ivf_lists * p // 1000) for p in (10, 25, 50, 100, 200)})
    efs = [100, 200, 400, 800, 1600]
    return {
        f"faiss HNSWFlat (M={m}, efC={ef_construction}; efSearch)": (faiss_hnsw_build, efs, faiss_hnsw_search),
        f"hnswlib (M={m}, efC={ef_construction}; ef)": (hnswlib_build, efs, hnswlib_search),
        f"usearch (M={m}, efC={ef_construction}; ef)": (usearch_build, efs, usearch_search),
        f"faiss IVFFlat (nlist={ivf_lists}; nprobe)": (faiss_ivf_build, probes, faiss_ivf_search),
        f"faiss PQ{dim // 2}x4 fast-scan + exact re-rank (k_factor)": (faiss_pq_build, [2, 4, 8, 16], faiss_pq_search),
    }


def library_module(label: str) -> str:
    """The Python module a library of ``candidates`` needs: each label starts with the module's name."""
    return label.split()[0]


def ann_section(
    name: str,
    corpus: np.ndarray,
    queries: np.ndarray,
    threads: int,
    libraries: list[str] | None,
    save: Callable[[], None],
    results: dict,
    m: int = 16,
    ef_construction: int = 100,
) -> None:
    section = results.setdefault("ann", {}).setdefault(
        name, {"n": len(corpus), "dim": corpus.shape[1], "queries": len(queries), "rows": []}
    )
    truth = ground_truth(corpus, queries, K)
    exact = ExactIndex(corpus)
    none = np.empty(0, np.int64)
    found, exact_qps = timed_queries(lambda q: exact.search(q, K, none)[0], queries)
    section["rows"].append({"library": "exact (server ExactIndex = faiss IndexFlatIP)", "param": "-",
                            "recall": recall(found, truth), "qps": exact_qps, "build_s": 0.0})

    def numpy_exact(q: np.ndarray) -> np.ndarray:
        scores = corpus @ q
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    found, numpy_qps = timed_queries(numpy_exact, queries)
    section["rows"].append({"library": "exact (numpy matvec + argpartition)", "param": "-",
                            "recall": recall(found, truth), "qps": numpy_qps, "build_s": 0.0})
    section["exact_qps"] = max(exact_qps, numpy_qps)
    save()
    for library, (build, sweep, search) in candidates(corpus.shape[1], len(corpus), threads, m, ef_construction).items():
        if libraries and not any(key in library for key in libraries):
            continue
        if importlib.util.find_spec(library_module(library)) is None:
            logger.warning("%s: %s skipped, its module is not installed (pip install -e '.[bench]')",
                           name, library)  # fmt: skip
            section.setdefault("not_installed", []).append(library)
            save()
            continue
        gc.collect()
        before = rss_mib()
        started = time.perf_counter()
        index = build(corpus)
        build_s = time.perf_counter() - started
        logger.info("%s %s built in %.1f s", name, library, build_s)
        for value in sweep:
            found, qps = timed_queries(search(index, value), queries)
            section["rows"].append(
                {
                    "library": library,
                    "param": value,
                    "recall": recall(found, truth),
                    "qps": qps,
                    "build_s": build_s,
                    "peak_rss_growth_mib": rss_mib() - before,
                }
            )
            logger.info(
                "%s %s %s: recall %.4f qps %.0f", name, library, value, section["rows"][-1]["recall"], qps
            )
            save()
            if section["rows"][-1]["recall"] >= 0.995:
                break
        del index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(port: int, concurrency: int, requests: list, warmup: int = 20) -> dict:
    from grpc import aio

    from proto import retrieval_pb2_grpc

    latencies: list[float] = []
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = retrieval_pb2_grpc.RetrieverStub(channel)
        for request in requests[:warmup]:
            await stub.Retrieve(request)
        queue = list(requests)

        async def worker() -> None:
            while queue:
                request = queue.pop()
                started = time.perf_counter()
                await stub.Retrieve(request, timeout=30)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(ms) / wall,
    }


def grpc_section(package: Path, requests_per_level: int, results: dict, save: Callable[[], None]) -> None:
    from proto import retrieval_pb2

    port, metrics_port = _free_port(), _free_port()
    repository, name, version = package.parent.parent, package.parent.name, package.name
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retrieval_server",
            "--repository",
            str(repository),
            "--model",
            f"{name}:{version}",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--threads",
            "4",
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
        with np.load(package / "index" / "graph.npz") as graph:
            ids, features, indptr, indices = (
                graph["ids"],
                graph["features"],
                graph["indptr"],
                graph["indices"],
            )
        rng = np.random.default_rng(0)
        users = rng.choice(ids, requests_per_level)
        known = [retrieval_pb2.RetrieveRequest(user_id=str(u), k=K) for u in users]
        unseen = []
        for u in rng.choice(len(ids), requests_per_level):
            neighbours = ids[indices[indptr[u] : indptr[u + 1]]]
            unseen.append(
                retrieval_pb2.RetrieveRequest(
                    user_id=f"new-{u}",
                    k=K,
                    user_features=features[u].tolist(),
                    neighbor_ids=neighbours.tolist(),
                )
            )
        rows = results.setdefault("grpc", [])
        for label, requests in (("known user", known), ("unseen user (ONNX on the fly)", unseen)):
            for concurrency in (1, 16):
                row = {"requests_kind": label, **asyncio.run(_load(port, concurrency, requests))}
                rows.append(row)
                logger.info("gRPC %s", row)
                save()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Retrieval: ANN vs exact search, and end-to-end Retrieve latency",
        "",
        f"Command: `{results['command']}`. Machine: {results['machine']}. Every ANN/exact query runs alone on "
        "one thread; recall@100 is against exact inner-product top-100 on the same queries. "
        "Speed-up = QPS / best exact QPS in the same run.",
        "",
    ]
    for name, section in results.get("ann", {}).items():
        lines += [
            f"## ANN on {name} (n={section['n']:,}, d={section['dim']}, {section['queries']} queries)",
            "",
            "| library | param | recall@100 | QPS | speed-up vs exact | build s | peak RSS growth MiB |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        best_exact = section.get("exact_qps", 1.0)
        for row in section["rows"]:
            lines.append(
                f"| {row['library']} | {row['param']} | {row['recall']:.4f} | {row['qps']:.0f} | "
                f"{row['qps'] / best_exact:.2f}x | {row['build_s']:.1f} | "
                f"{row.get('peak_rss_growth_mib', 0):.0f} |"
            )
        ok = [
            r
            for r in section["rows"]
            if not r["library"].startswith("exact") and r["recall"] >= TARGET_RECALL
        ]
        if ok:
            best = max(ok, key=lambda r: r["qps"])
            lines += [
                "",
                f"Fastest setting with recall@100 >= {TARGET_RECALL}: {best['library']} at {best['param']}: "
                f"recall {best['recall']:.4f}, {best['qps'] / best_exact:.2f}x exact QPS.",
                "",
            ]
        else:
            lines += ["", f"No ANN setting reached recall@100 >= {TARGET_RECALL} here.", ""]
        if section.get("not_installed"):
            skipped = "; ".join(section["not_installed"])
            lines += [f"Not measured, module not installed (`pip install -e '.[bench]'`): {skipped}.", ""]
    if results.get("grpc"):
        lines += [
            "## End-to-end Retrieve (k=100) through gRPC",
            "",
            f"Server: `python -m retrieval_server` over {results.get('package')} (exact index), client grpc.aio "
            "in another process on the same machine.",
            "",
            "| requests | concurrency | n | p50 ms | p99 ms | requests/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in results["grpc"]:
            lines.append(
                f"| {row['requests_kind']} | {row['concurrency']} | {row['requests']} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['rps']:.0f} |"
            )
    if results.get("notes"):
        lines += ["", *results["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--package", type=Path, help="retrieval package for the ego-Facebook part and the gRPC part"
    )
    parser.add_argument("--random-n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--hnsw-m", type=int, default=16, help="HNSW graph degree (all HNSW libraries)")
    parser.add_argument("--ef-construction", type=int, default=100, help="HNSW build beam (all HNSW libraries)")
    parser.add_argument("--libraries", nargs="*", help="substrings of library names to run (default: all)")
    parser.add_argument("--grpc-requests", type=int, default=1000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ego", "random", "grpc"])
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval")
    parser.add_argument("--note", action="append", default=[], help="a line appended to the markdown")
    args = parser.parse_args(argv)
    if args.package and not (args.package / "index" / "embeddings.npy").is_file():
        parser.error(f"--package {args.package}: no index/embeddings.npy there (a retrieval model package)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    given = sys.argv[1:] if argv is None else argv
    results: dict = {
        "command": "nice -n 10 python benchmarks/bench_retrieval.py "
        + " ".join(a for i, a in enumerate(given) if a != "--note" and (i == 0 or given[i - 1] != "--note")),
        "machine": f"{os.cpu_count()} CPUs shared with other jobs",
        "package": str(args.package),
        "notes": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        write_markdown(results, args.out.with_suffix(".md"))

    if args.package and "ego" not in args.skip:
        corpus = np.load(args.package / "index" / "embeddings.npy").astype(np.float32)
        queries = corpus[
            np.random.default_rng(1).choice(len(corpus), min(args.queries, len(corpus)), replace=False)
        ]
        ann_section(
            "ego-Facebook embeddings", corpus, queries, args.build_threads, args.libraries, save, results,
            args.hnsw_m, args.ef_construction,
        )
    if args.package and "grpc" not in args.skip:
        grpc_section(args.package, args.grpc_requests, results, save)
    if "random" not in args.skip:
        rng = np.random.default_rng(0)
        corpus = normalised(rng.standard_normal((args.random_n, 64), dtype=np.float32))
        queries = normalised(rng.standard_normal((args.queries, 64), dtype=np.float32))
        ann_section(
            f"{args.random_n:,} random 64-d vectors",
            corpus,
            queries,
            args.build_threads,
            args.libraries,
            save,
            results,
            args.hnsw_m,
            args.ef_construction,
        )
    save()


if __name__ == "__main__":
    main()
