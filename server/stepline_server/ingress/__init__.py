"""Ingress: gRPC servicers that validate, translate to the engine's records, and answer."""
