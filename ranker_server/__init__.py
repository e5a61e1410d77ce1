"""Ranker server: serves every ranking variant of every running experiment over gRPC on ONNX Runtime.

Layering (after KServe): ``servicer`` is transport only, ``dataplane`` holds the request flow and imports
nothing from grpc, ``model_repository`` maps model versions to loaded ONNX sessions.
"""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The log lines of ``python -m ranker_server``; each ``--workers`` process puts ``w<i>`` before the level."""
