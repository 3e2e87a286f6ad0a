"""The HTTP side of the server: the dashboard, its JSON API, Prometheus /metrics and /healthz."""

from stepline_server.http.app import create_app
from stepline_server.http.listener import HttpListener
from stepline_server.http.metrics import Metrics

__all__ = ["HttpListener", "Metrics", "create_app"]
