"""Stepline's orchestrator: gRPC ingress, the engine that drives runs, and the store."""

import os

__version__ = "0.1.0"

# gRPC's core logs at INFO on stderr (a refused TLS handshake, for one) unless told otherwise,
# which would break the CLI's one-line errors. It reads the variable once, when grpc is first
# imported, so it is set here, before any of our modules imports grpc; a user's value stands.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
