"""The server's one typed configuration object, read from flags and STEPLINE_* variables."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_GRPC_ADDRESS = "127.0.0.1:7288"
# The dashboard and /metrics (like the Inngest dev server's port); "" turns HTTP off.
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8288"
DEFAULT_SQLITE_FILE = "stepline.db"
# Limits, with Inngest's defaults where it has one: a step's (or a run's) output 4 MiB, an
# event 512 KiB, 5,000 events per request, a run's stored step outputs 32 MiB, 1,000 steps.
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 512 * 1024
DEFAULT_MAX_EVENTS_PER_REQUEST = 5000
DEFAULT_MAX_RUN_STATE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_STEPS_PER_RUN = 1000
MAX_STEPS_PER_RUN = 10_000
# The most a CEL filter may be estimated to cost on one event (engine/expressions.py), in ms of
# the writer thread: every write waits while it runs, so it stays well under a commit's budget.
DEFAULT_FILTER_BUDGET_MS = 5.0
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_HEARTBEAT_SECONDS = 5.0
DEFAULT_POLL_SECONDS = 1.0
DEFAULT_EVENT_DEDUP_SECONDS = 24 * 3600.0
# Ended runs (and their steps, attempts, waits, and events no run refers to) are deleted this
# long after they end; 0 keeps them forever. Functions may declare their own (FunctionConfig).
DEFAULT_RETENTION_SECONDS = 30 * 86400.0
# How often the pruner looks for history past its retention.
DEFAULT_PRUNE_SECONDS = 60.0
DEFAULT_SHUTDOWN_GRACE_SECONDS = 5.0
DEFAULT_RETRY_BASE_SECONDS = 1.0
DEFAULT_RETRY_MAX_SECONDS = 600.0
DEFAULT_RETRIES = 3
# The HTTP bridge: requests in flight per HTTP app on one server, and how long one may take.
DEFAULT_APP_INFLIGHT = 100
DEFAULT_APP_TIMEOUT_SECONDS = 300.0
MAX_RETRIES = 100


# A server id names the server in worker connection ids (`ID/N`) and the servers table.
MAX_SERVER_ID_LENGTH = 32
SERVER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@\[\]-]+")

# Settings where an empty value is meaningful (it turns the feature off), not "unset".
_EMPTY_MEANS_OFF = frozenset({"http_address"})


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of host names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


_RETENTION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d|w)")
_RETENTION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_retention(text: str) -> float:
    """A retention in seconds: a duration such as "30d", "12h" or "90m", or "0"/"forever" (keep
    everything)."""
    value = text.strip().lower()
    if value in {"0", "forever"}:
        return 0.0
    match = _RETENTION.fullmatch(value)
    if match is None:
        raise ValueError(f'expected a duration like "30d", "12h" or "90m", or "forever", '
                         f"got {text!r}")
    return float(match.group(1)) * _RETENTION_UNITS[match.group(2)]


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; see `stepline serve --help` for the flags."""

    address: str = DEFAULT_GRPC_ADDRESS
    http_address: str = DEFAULT_HTTP_ADDRESS
    database_url: str = field(default_factory=lambda: sqlite_url(DEFAULT_SQLITE_FILE))
    # A step's output, a run's output (bytes of JSON).
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # An event's data (and its user), from any edge: SendEvent, step.send_event, step.invoke.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_events_per_request: int = DEFAULT_MAX_EVENTS_PER_REQUEST
    # The sum of a run's stored step outputs; a step whose output would pass it fails.
    max_run_state_bytes: int = DEFAULT_MAX_RUN_STATE_BYTES
    max_steps_per_run: int = DEFAULT_MAX_STEPS_PER_RUN
    filter_budget_ms: float = DEFAULT_FILTER_BUDGET_MS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    event_dedup_seconds: float = DEFAULT_EVENT_DEDUP_SECONDS
    # 0: forever. Set with a duration ("30d", "12h") or "forever" (parse_retention).
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    prune_seconds: float = DEFAULT_PRUNE_SECONDS
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    # SQLite only: FULL syncs the WAL on every commit (accepted = on disk even after power loss);
    # NORMAL survives process crashes but not power loss.
    sqlite_synchronous: str = "FULL"
    # Backoff before retry n (1-based): base * 2**(n-1), capped, with jitter.
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS
    # Host names the dashboard answers to besides IP addresses and localhost (DNS rebinding).
    http_hosts: tuple[str, ...] = ()
    # Keys (see auth.py): a TOML file of [[keys]], and keys from the environment. With none,
    # every call is allowed, which `serve` accepts only on loopback unless `insecure`.
    keys_file: str = ""
    event_keys: str = ""
    signing_keys: str = ""
    admin_keys: str = ""
    insecure: bool = False
    # TLS for gRPC and the dashboard (PEM files): the server's certificate chain and key; with
    # a client CA, gRPC clients must present a certificate it signed (mutual TLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # This server's stable identity among those sharing the database; "" derives it from the
    # host name and the listen address (ids.derived_server_id). Started again under its id, a
    # server releases at once what its previous process held. Two live servers must not share
    # one.
    server_id: str = ""
    # The HTTP bridge (bridge/): the cap on requests in flight per HTTP app on this server, the
    # timeout of one request, and which app URLs it may call. Unless `any_app_url` (`stepline
    # dev`), URLs whose host resolves to a private, loopback or link-local address are refused,
    # at registration and on every call, except hosts and CIDRs listed in `allow_app_hosts`.
    app_inflight: int = DEFAULT_APP_INFLIGHT
    app_timeout_seconds: float = DEFAULT_APP_TIMEOUT_SECONDS
    allow_app_hosts: tuple[str, ...] = ()
    any_app_url: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        readers: dict[str, tuple[str, Callable[[str], object]]] = {
            "address": ("STEPLINE_ADDRESS", str),
            "http_address": ("STEPLINE_HTTP_ADDRESS", str),
            "database_url": ("STEPLINE_DATABASE_URL", str),
            "max_payload_bytes": ("STEPLINE_MAX_PAYLOAD_BYTES", int),
            "max_event_bytes": ("STEPLINE_MAX_EVENT_BYTES", int),
            "max_events_per_request": ("STEPLINE_MAX_EVENTS_PER_REQUEST", int),
            "max_run_state_bytes": ("STEPLINE_MAX_RUN_STATE_BYTES", int),
            "max_steps_per_run": ("STEPLINE_MAX_STEPS_PER_RUN", int),
            "filter_budget_ms": ("STEPLINE_FILTER_BUDGET_MS", float),
            "lease_seconds": ("STEPLINE_LEASE_SECONDS", float),
            "heartbeat_seconds": ("STEPLINE_HEARTBEAT_SECONDS", float),
            "poll_seconds": ("STEPLINE_POLL_SECONDS", float),
            "event_dedup_seconds": ("STEPLINE_EVENT_DEDUP_SECONDS", float),
            "retention_seconds": ("STEPLINE_RETENTION", parse_retention),
            "prune_seconds": ("STEPLINE_PRUNE_SECONDS", float),
            "shutdown_grace_seconds": ("STEPLINE_SHUTDOWN_GRACE_SECONDS", float),
            "sqlite_synchronous": ("STEPLINE_SQLITE_SYNCHRONOUS", str),
            "retry_base_seconds": ("STEPLINE_RETRY_BASE_SECONDS", float),
            "retry_max_seconds": ("STEPLINE_RETRY_MAX_SECONDS", float),
            "http_hosts": ("STEPLINE_HTTP_HOSTS", _names),
            "keys_file": ("STEPLINE_KEYS_FILE", str),
            "event_keys": ("STEPLINE_EVENT_KEYS", str),
            "signing_keys": ("STEPLINE_SIGNING_KEYS", str),
            "admin_keys": ("STEPLINE_ADMIN_KEYS", str),
            "tls_cert_file": ("STEPLINE_TLS_CERT", str),
            "tls_key_file": ("STEPLINE_TLS_KEY", str),
            "tls_client_ca_file": ("STEPLINE_TLS_CLIENT_CA", str),
            "server_id": ("STEPLINE_SERVER_ID", str),
            "app_inflight": ("STEPLINE_APP_INFLIGHT", int),
            "app_timeout_seconds": ("STEPLINE_APP_TIMEOUT_SECONDS", float),
            "allow_app_hosts": ("STEPLINE_ALLOW_APP_HOSTS", _names),
        }
        for attr, (var, kind) in readers.items():
            raw = env.get(var)
            if raw or (raw is not None and attr in _EMPTY_MEANS_OFF):
                try:
                    values[attr] = kind(raw)
                except ValueError as exc:
                    expected = (f"expected {kind.__name__}" if kind in (int, float) else exc)
                    raise ValueError(f"{var}={raw!r}: {expected}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        for name in ("max_payload_bytes", "max_event_bytes", "max_events_per_request",
                     "max_run_state_bytes", "filter_budget_ms", "app_inflight",
                     "app_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 1 <= self.max_steps_per_run <= MAX_STEPS_PER_RUN:
            raise ValueError(f"max_steps_per_run must be between 1 and {MAX_STEPS_PER_RUN}, "
                             f"got {self.max_steps_per_run}")
        if self.retention_seconds < 0 or self.prune_seconds <= 0:
            raise ValueError("retention_seconds must be at least 0 (0: forever) and "
                             "prune_seconds positive")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than "
                f"lease_seconds ({self.lease_seconds})")
        if self.http_address:
            host, _, port = self.http_address.rpartition(":")
            if not host or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"http_address must be HOST:PORT (or empty to turn HTTP off), "
                                 f"got {self.http_address!r}")
        if self.sqlite_synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("sqlite_synchronous must be FULL, NORMAL or EXTRA")
        self._validate_identity()

    def _validate_identity(self) -> None:
        """TLS files that go together, and the server id's form."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (STEPLINE_TLS_CERT, "
                             "STEPLINE_TLS_KEY): TLS needs the certificate and its key")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mutual TLS) needs the server's own certificate "
                             "and key too (STEPLINE_TLS_CERT, STEPLINE_TLS_KEY)")
        if self.server_id and (len(self.server_id) > MAX_SERVER_ID_LENGTH
                               or not SERVER_ID_PATTERN.fullmatch(self.server_id)):
            raise ValueError(f"server_id must be 1 to {MAX_SERVER_ID_LENGTH} letters, digits or "
                             f"'.', '_', ':', '@', '[', ']', '-', got {self.server_id!r}")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def silence_seconds(self) -> float:
        """How long a worker may stay silent (no heartbeat, no report) before its server
        counts it lost and gives its runs back: halfway between a heartbeat and the lease, so
        a worker is not lost between two heartbeats, and its server acts before the leases
        expire (an expired lease is taken over without charging an attempt)."""
        return (self.heartbeat_seconds + self.lease_seconds) / 2

    @property
    def silence_check_seconds(self) -> float:
        """How often a server looks for silent workers: often enough to act before the lease
        runs out (silence + check < lease)."""
        return (self.lease_seconds - self.heartbeat_seconds) / 4

    @property
    def grpc_max_message_bytes(self) -> int:
        # Above the payload limit, so an oversize payload reaches our validation and gets a
        # precise error instead of gRPC's generic RESOURCE_EXHAUSTED.
        return max(self.max_payload_bytes, self.max_event_bytes) * 4 + 1024 * 1024
