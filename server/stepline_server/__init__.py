"""Stepline's orchestrator: gRPC ingress, the engine that drives runs, and the store."""

__version__ = "0.1.0"
