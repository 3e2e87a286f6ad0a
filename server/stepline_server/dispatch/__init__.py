"""Dispatch: hands leased runs to connected workers and their ops back to the engine."""
