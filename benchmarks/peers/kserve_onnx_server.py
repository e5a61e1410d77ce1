"""KServe's Python ModelServer serving an ONNX ranking graph through ONNX Runtime: the peer of
benchmarks/bench_serving_peers.py. Runs in KServe's own venv (``benchmarks/peers/setup_kserve_venv.sh``),
never in the project's: kserve pins protobuf < 7, this project needs >= 7.

A custom ``kserve.Model`` (the pattern of KServe's custom-model docs) with one ORT session, the thread settings
given on the command line; ``--predict sync`` runs ORT inside ``predict`` on the event loop, as KServe's
examples do, ``--predict executor`` awaits it in a thread pool. Clients call ModelInfer on the gRPC port with
inputs ``sparse`` INT64 [B, S] and ``dense`` FP32 [B, D] and get ``logits`` FP32 [B, T] as raw contents.

Usage (KServe parses sys.argv at import time, so our flags are read first and removed):
    /work/venvs/kserve/bin/python benchmarks/peers/kserve_onnx_server.py --model model.onnx --grpc-port P --http-port Q
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import sys


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="path of model.onnx")
    parser.add_argument("--name", default="bench-mmoe", help="model name clients use")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--spinning", choices=["off", "during-runs"], default="off",
                        help="ORT pool threads spin during a run (stopping after it) or never")  # fmt: skip
    parser.add_argument("--predict", choices=["sync", "executor"], default="sync")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--request-logs", action="store_true",
                        help="keep KServe's INFO log line per gRPC call and its latency log (off: WARNING)")  # fmt: skip
    return parser.parse_args(argv)


def main() -> None:
    args = parse(sys.argv[1:])
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv when imported
    import kserve
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    spin = "1" if args.spinning == "during-runs" else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", "1")

    class OnnxRanking(kserve.Model):
        def __init__(self) -> None:
            super().__init__(args.name)
            self.session: ort.InferenceSession | None = None
            self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="onnxruntime")

        def load(self) -> bool:
            self.session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
            self.ready = True
            return self.ready

        def run(self, payload: InferRequest) -> InferResponse:
            feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            logits = self.session.run(["logits"], feeds)[0]
            output = InferOutput("logits", list(logits.shape), "FP32")
            output.set_data_from_numpy(logits)
            return InferResponse(payload.id, self.name, [output], from_grpc=payload.from_grpc)

    class SyncPredict(OnnxRanking):
        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            return self.run(payload)

    class ExecutorPredict(OnnxRanking):
        async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self.run, payload)

    model = (SyncPredict if args.predict == "sync" else ExecutorPredict)()
    model.load()
    if args.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # asyncio.run in ModelServer.start then runs uvloop
        asyncio.set_event_loop(asyncio.new_event_loop())  # ModelServer.setup_event_loop asks for a current loop
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=args.request_logs
    )
    if not args.request_logs:
        for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
