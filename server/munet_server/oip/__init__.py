"""The Open Inference Protocol (KServe v2, with Triton's binary tensor and classification
extensions), independent of the transport: `tensors` reads and writes tensor data, `model` answers
metadata, config and the repository index, `infer` runs a request through the Predictor. The HTTP
routes (`rest.protocol`) and the gRPC service (`rpc.inference`) only convert to and from these."""
