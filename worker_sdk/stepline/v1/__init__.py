"""Generated protobuf and gRPC code for the stepline.v1 contract (`make proto`; do not edit)."""
