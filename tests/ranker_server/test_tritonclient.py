"""NVIDIA's own client, ``tritonclient.grpc``, calls the ranker's Open Inference Protocol endpoint.

tritonclient[grpc] requires protobuf < 7 and this project protobuf >= 7, so it cannot share our venv; it lives
in ``.venv-tritonclient`` (created by ``make test``) and runs as its own process, as a backend built for
Triton would. The wire format is the same across protobuf versions.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ranker_server.package import read_package
from ranker_server.server import RankerServer
from tests.ranker_server.conftest import FakeRouter, MutableSource, make_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = Path(os.environ.get("MTRANK_TRITONCLIENT_PYTHON", ROOT / ".venv-tritonclient/bin/python"))

CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

client = triton.InferenceServerClient(sys.argv[1])
meta = client.get_model_metadata("tiny", as_json=True)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("tiny", "1"),
    "missing_ready": client.is_model_ready("tiny", "9"),
    "versions": meta["versions"],
    "inputs": [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]],
}
sparse = np.load(sys.argv[2])["sparse"]
dense = np.load(sys.argv[2])["dense"]
inputs = [triton.InferInput("sparse", list(sparse.shape), "INT64"), triton.InferInput("dense", list(dense.shape), "FP32")]
inputs[0].set_data_from_numpy(sparse)
inputs[1].set_data_from_numpy(dense)
result = client.infer("tiny", inputs, model_version="1", outputs=[triton.InferRequestedOutput("logits")], request_id="t-1")
out["logits"] = result.as_numpy("logits").tolist()
out["id"] = result.get_response().id
narrow = triton.InferInput("sparse", [len(sparse), 2], "INT64")
narrow.set_data_from_numpy(np.ascontiguousarray(sparse[:, :2]))
try:
    client.infer("tiny", [narrow, inputs[1]])
except InferenceServerException as exc:
    out["error"] = [exc.status(), exc.message()]
try:  # the classification extension: refused, not answered with plain logits
    client.infer("tiny", inputs, outputs=[triton.InferRequestedOutput("logits", class_count=1)])
except InferenceServerException as exc:
    out["classification"] = [exc.status(), exc.message()]
print(json.dumps(out))
"""


async def test_tritonclient_reads_metadata_and_infers(repository: Path, tmp_path: Path) -> None:
    if not CLIENT_PYTHON.is_file():
        message = f"{CLIENT_PYTHON} is missing: `make test` creates it (tritonclient[grpc] in its own venv)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    rng = np.random.default_rng(3)
    sparse = np.stack([rng.integers(0, 20, 6), rng.integers(0, 20, 6), rng.integers(0, 100, 6)], 1)
    dense = rng.normal(size=(6, 3)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", sparse=sparse.astype(np.int64), dense=dense)
    server = RankerServer(make_settings(repository), MutableSource(FakeRouter()))
    port = await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            str(CLIENT_PYTHON), "-c", CLIENT, f"127.0.0.1:{port}", str(tmp_path / "rows.npz"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await server.stop(grace_s=1.0)
    assert process.returncode == 0, stderr.decode()[-3000:]
    out = json.loads(stdout)
    assert out["live"] and out["ready"] and out["model_ready"] and not out["missing_ready"]
    assert out["versions"] == ["1", "2"]
    assert out["inputs"] == [["sparse", "INT64", [-1, 3]], ["dense", "FP32", [-1, 3]]]
    import onnxruntime as ort

    session = ort.InferenceSession(str(read_package(repository / "tiny" / "1").onnx_path))
    expected = session.run(["logits"], {"sparse": sparse.astype(np.int64), "dense": dense})[0]
    np.testing.assert_allclose(np.array(out["logits"]), expected, rtol=1e-5, atol=1e-6)
    assert out["id"] == "t-1"
    status, message = out["error"]
    assert status == "StatusCode.INVALID_ARGUMENT" and message.startswith("inputs[0].shape"), out["error"]
    status, message = out["classification"]
    assert status == "StatusCode.INVALID_ARGUMENT" and message.startswith("outputs[0].parameters"), message

