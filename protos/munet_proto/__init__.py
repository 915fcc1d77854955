"""Generated protobuf and gRPC code for munet.v1 (regenerate with scripts/gen_protos.sh)."""
