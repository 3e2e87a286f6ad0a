"""SDK defaults, named once."""

from __future__ import annotations

from datetime import timedelta

DEFAULT_URL = "127.0.0.1:7288"
DEFAULT_SLOTS = 10
DEFAULT_RETRIES = 3
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
DRAIN_TIMEOUT_SECONDS = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# An app served over HTTP runs steps back to back in one request until a suspension, the run's
# end or a failure, or until one of these is spent; the next step then starts the next request.
SERVE_MAX_OPS = 100
SERVE_MAX_SECONDS = 2.0
# The server's default limit on a step's or a run's output (Welcome.max_payload_bytes on a stream).
SERVE_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# Longest sleep, wait or timeout the server accepts.
MAX_DURATION = timedelta(days=366)


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
