"""Ranker server: serves every ranking variant of every running experiment over gRPC on ONNX Runtime.

Layering (after KServe): ``servicer`` is transport only, ``dataplane`` holds the request flow and imports
nothing from grpc, ``model_repository`` maps model versions to loaded ONNX sessions.
"""
