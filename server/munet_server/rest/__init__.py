"""HTTP/REST front door (Open Inference Protocol + /munet/v1), beside the gRPC one in `rpc`."""
