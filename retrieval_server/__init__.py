"""gRPC retrieval service: embedding-based candidate retrieval with ONNX user encoders and ANN indexes.

Layering (after KServe): ``servicer`` (transport, protobuf stops there) -> ``dataplane`` (logic, no grpc) ->
``model_repository`` (versioned packages: ONNX session + index + graph store, verified and hot-swapped).
Serving never imports torch: onnxruntime + numpy (+ the ANN library) only.
"""
