"""The one schema both backends share (SQLAlchemy Core). Migrations must produce exactly this.

Times are integer milliseconds since the epoch; JSON documents are stored as text, as received.
Functions are keyed by full name, `<app_id>:<function_id>` (names.py), in every function_id
column: 257 characters hold an app id, the ':' and a function id of at most 128 each.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("data", Text, nullable=False),
    Column("user", Text, nullable=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("traceparent", String(128), nullable=True),
    Index("ix_events_received_at", "received_at_ms"),
    # Listing events of one name, and runs by their trigger's name (RunService).
    Index("ix_events_name", "name", "received_at_ms"),
)

functions = Table(
    "functions",
    metadata,
    Column("id", String(257), primary_key=True),  # the full name
    Column("app_id", String(128), nullable=False),
    Column("name", String(256), nullable=False),
    Column("retries", Integer, nullable=False),
    # Canonical JSON of the whole declared config: registration compares it to detect changes.
    Column("config", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("archived", Boolean, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Index("ix_functions_app", "app_id"),
)

# Event triggers by name: matching an event is one indexed lookup, whatever the function count.
event_triggers = Table(
    "event_triggers",
    metadata,
    Column("function_id", String(257), ForeignKey("functions.id"), primary_key=True),
    Column("event_name", String(256), primary_key=True),
    Column("expression", Text, nullable=False),
    Index("ix_event_triggers_name", "event_name"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("function_id", String(257), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("ended_at_ms", BigInteger, nullable=True),
    # A run started by step.invoke: the step of the parent run that waits for this one.
    Column("parent_run_id", String(32), nullable=True),
    Column("parent_step_id", String(300), nullable=True),
    # A replay or a rerun from a step: the run it was made from.
    Column("source_run_id", String(32), nullable=True),
    Index("ix_runs_created", "created_at_ms", "id"),
    Index("ix_runs_function_created", "function_id", "created_at_ms"),
    Index("ix_runs_status_created", "status", "created_at_ms"),
    # The runs an event triggered (ListEvents, ListRuns by event name).
    Index("ix_runs_event", "event_id"),
    # The pruner: a function's runs that ended before its retention's cutoff (NULL: unended).
    Index("ix_runs_function_ended", "function_id", "ended_at_ms"),
)

# A step's final result, written once; a sleep, wait or invoke is written when it begins (status
# sleeping/waiting/invoking, ended_at_ms its due time) and completed when it resumes.
steps = Table(
    "steps",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step_id", String(300), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("name", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("ended_at_ms", BigInteger, nullable=False),
    # What kind of step (model.StepKind): run, sleep, wait_for_event, invoke, send_event.
    Column("kind", String(16), nullable=False),
)

# Failed attempts of steps (and of the function body, step_id ""), for history and timelines.
step_failures = Table(
    "step_failures",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step_id", String(300), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("error", Text, nullable=False),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("ended_at_ms", BigInteger, nullable=False),
)

# One row per unfinished run (target_step_id ""): ready (lease_owner null, due), leased to a
# worker, or waiting for its due time (retry backoff, sleep, the timeout of a wait). While a run's
# parallel steps execute, each has a row of its own (target_step_id set) and the run's row waits
# for them.
# `lease` is the fencing token, bumped at every claim.
queue = Table(
    "queue",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("target_step_id", String(300), primary_key=True),
    # The full name, as everywhere: a claim matches a worker's functions without a join.
    Column("function_id", String(257), nullable=False),
    Column("due_at_ms", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("lease", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    # Steps recorded so far: the position of the next one, kept here to spare a query per step.
    Column("step_count", Integer, nullable=False),
    # A suspended run: what it waits for (model.WaitKind) and the step that resumes. Claimed at
    # due_at_ms, it resumes with the sleep done, or with the wait or invoke timed out.
    Column("wait_kind", String(16), nullable=True),
    Column("wait_step", String(300), nullable=True),
    # Timeouts: `start` until the first dispatch, then `finish` (armed with finish_timeout_ms).
    Column("deadline_kind", String(8), nullable=True),
    Column("deadline_ms", BigInteger, nullable=True),
    Column("finish_timeout_ms", BigInteger, nullable=True),
    # Copied from the run: its end resumes this parent step (step.invoke).
    Column("parent_run_id", String(32), nullable=True),
    Column("parent_step_id", String(300), nullable=True),
    # W3C trace context of the run (from its trigger event), for telemetry at every dispatch.
    Column("traceparent", String(128), nullable=True),
    # Flow control (engine/flow*.py); NULL for functions without it.
    # Concurrency: the keys whose slots the item's steps take (flow_keys ids, kind
    # "concurrency"), one per limit.
    Column("ckey1", String(300), nullable=True),
    Column("ckey2", String(300), nullable=True),
    # Why the run was held back at its start: "throttle", "debounce", "batch", "priority" (kept
    # afterwards: a batched run's claims load its events by it). Parking is held_key's.
    Column("held", String(16), nullable=True),
    # Parked for want of a slot of this concurrency key: due_at_ms is NEVER_MS until a slot
    # frees; then it becomes held_order_ms again (its place: enqueue time, moved by priority).
    Column("held_key", String(300), nullable=True),
    Column("held_order_ms", BigInteger, nullable=True),
    Index("ix_queue_claim", "function_id", "due_at_ms"),
    Index("ix_queue_owner", "lease_owner"),
    Index("ix_queue_deadline", "deadline_ms"),
    Index("ix_queue_ckey1", "ckey1", "due_at_ms", sqlite_where=text("ckey1 IS NOT NULL"),
          postgresql_where=text("ckey1 IS NOT NULL")),
    Index("ix_queue_ckey2", "ckey2", "due_at_ms", sqlite_where=text("ckey2 IS NOT NULL"),
          postgresql_where=text("ckey2 IS NOT NULL")),
    Index("ix_queue_parked", "held_key", "held_order_ms",
          sqlite_where=text("held_key IS NOT NULL"),
          postgresql_where=text("held_key IS NOT NULL")),
)

# Pending matches of incoming events (model.MatchKind): step.wait_for_event (kind
# "wait_for_event") and a function's cancel_on (kind "cancel", step_id "cancel:N"). Looked up by
# event name, and by match_key when the expression pins an equality (async.data.userId ==
# event.data.userId), so an event costs the waits that can match it, not every pending wait.
waits = Table(
    "waits",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step_id", String(300), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("event_name", String(256), nullable=False),
    Column("expression", Text, nullable=True),
    # Dotted path into the candidate event (e.g. "data.userId"), and "path=json value" to match.
    Column("match_path", String(300), nullable=True),
    Column("match_key", String(600), nullable=True),
    Column("trigger_event_id", String(128), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ix_waits_paths", "event_name", "match_path"),
    Index("ix_waits_keys", "event_name", "match_key"),
)

# Cron triggers, one row each, with the next tick to fire. The scheduler looks only at rows due
# now (index on next_tick_ms): idle cron functions cost nothing per tick.
cron_schedules = Table(
    "cron_schedules",
    metadata,
    Column("function_id", String(257), ForeignKey("functions.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("schedule", String(256), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("next_tick_ms", BigInteger, nullable=False),
    Index("ix_cron_next_tick", "next_tick_ms"),
)

# Server processes sharing this database, by their stable id (settings.server_id), each
# refreshing its row every heartbeat interval: a server whose row went stale is dead. A server
# that starts again under its id releases what its previous process left (leases, worker rows).
servers = Table(
    "servers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("last_heartbeat_ms", BigInteger, nullable=False),
)

# Workers connected to any server sharing this database (one row per stream), so every server
# can list them; removed when the stream closes or when their server starts again, hidden once
# their server is known dead, and stale rows age out by last_heartbeat_ms.
workers = Table(
    "workers",
    metadata,
    Column("connection_id", String(64), primary_key=True),
    Column("server_id", String(32), nullable=False),
    Column("worker_id", String(256), nullable=False),
    Column("app_id", String(128), nullable=False),
    Column("function_ids", Text, nullable=False),  # JSON list of full names
    Column("slots", Integer, nullable=False),
    Column("sdk", String(128), nullable=False),
    Column("connected_at_ms", BigInteger, nullable=False),
    Column("last_heartbeat_ms", BigInteger, nullable=False),
    Column("draining", Boolean, nullable=False),
)

# Bulk operations (engine/bulk.py): a cancel or a replay of the runs of one function that match a
# selection, worked through in small batches by one server at a time (the lease). The cursor is
# the last run examined, in (created_at_ms, id) order, committed with each batch's cancels or
# replays, so a resumed operation never acts on a run twice.
bulk_operations = Table(
    "bulk_operations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # model.BulkKind: cancel, replay
    Column("function_id", String(257), nullable=False),
    Column("statuses", Text, nullable=False),  # JSON list of the run statuses acted on
    Column("created_after_ms", BigInteger, nullable=True),
    # The end of the range, fixed when the operation starts: runs it makes are outside it.
    Column("created_before_ms", BigInteger, nullable=False),
    Column("expression", Text, nullable=True),  # CEL over the trigger event
    Column("max_runs", BigInteger, nullable=True),  # replays: at most this many
    Column("reason", Text, nullable=True),
    Column("state", String(16), nullable=False),  # model.BulkState
    Column("total", BigInteger, nullable=False),  # matching runs when it started
    Column("done", BigInteger, nullable=False),  # matching runs examined so far
    Column("applied", BigInteger, nullable=False),  # runs cancelled or replayed
    Column("cursor_created_ms", BigInteger, nullable=True),
    Column("cursor_run_id", String(32), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("ended_at_ms", BigInteger, nullable=True),
    Index("ix_bulk_operations_state", "state", "created_at_ms"),
    Index("ix_bulk_operations_created", "created_at_ms", "id"),
)

# The runs a bulk replay replayed, by source: written with the replay, so no source is replayed
# twice by one operation whatever happens to the cursor.
bulk_operation_runs = Table(
    "bulk_operation_runs",
    metadata,
    Column("operation_id", String(32), primary_key=True),
    Column("run_id", String(32), primary_key=True),
    Column("new_run_id", String(32), nullable=False),
)

# Paused functions (engine/pauses.py): mode "keep" holds the starts of new events until resumed,
# "skip" drops them (counted); NULL once resumed (the row keeps the count of skipped starts).
function_pauses = Table(
    "function_pauses",
    metadata,
    Column("function_id", String(257), primary_key=True),
    Column("mode", String(8), nullable=True),
    Column("paused_at_ms", BigInteger, nullable=True),
    Column("skipped", BigInteger, nullable=False),
)

# Starts held while their function is paused with mode "keep": started, oldest first, once it
# is resumed (and deleted in that transaction).
held_starts = Table(
    "held_starts",
    metadata,
    Column("function_id", String(257), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("held_at_ms", BigInteger, nullable=False),
    Index("ix_held_starts_function", "function_id", "held_at_ms"),
    Index("ix_held_starts_event", "event_id"),  # the pruner keeps a held start's event
)

# Apps, however their functions are served: by workers on the stream (kind "stream", a row
# written when they register) or at an HTTP URL the bridge calls for each step boundary (kind
# "http", with its wire protocol). Every server loads the HTTP apps from here, so an app synced
# through one replica is served by all.
apps = Table(
    "apps",
    metadata,
    Column("app_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),  # "stream" | "http"
    Column("url", Text, nullable=False),  # "" for stream apps
    Column("protocol", String(32), nullable=False),  # "stepline" | "inngest"
    Column("sdk", String(128), nullable=False),
    Column("framework", String(64), nullable=False),
    Column("synced_at_ms", BigInteger, nullable=False),
    Column("extra", Text, nullable=False),  # JSON text, protocol-specific
)

# Flow control state, one row per (kind, key), read and written under a row lock in the
# transactions that start or claim work, so limits hold across replicas. `key` is the key's id
# (engine/flow_keys.py: the owning function, or "*" for env/account scope, and a digest of the
# key's value). Kinds and their columns:
#   concurrency  a lock object for the key's slots (counts are taken from the queue)
#   throttle     GCRA: tat_ms, the theoretical arrival time of the next start
#   rate_limit   GCRA likewise; events over it are skipped (flow_skips)
#   idempotency  expires_ms: until then the key starts no run
#   singleton    run_id: the key's run, while it is unfinished
#   debounce     run_id: the queued run the next event replaces the event of; first_ms
#   batch        run_id: the open batch's run, count its events so far; first_ms
flow_keys = Table(
    "flow_keys",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("function_id", String(257), nullable=True),  # NULL for env/account scope
    Column("value", Text, nullable=False),  # the key's value, for listings ("" without a key)
    Column("run_id", String(32), nullable=True),
    Column("tat_ms", BigInteger, nullable=True),
    Column("count", Integer, nullable=False),
    Column("first_ms", BigInteger, nullable=True),
    # When the row may be deleted (retention pruner); NULL: while its run is unfinished.
    Column("expires_ms", BigInteger, nullable=True),
    Index("ix_flow_keys_expires", "expires_ms"),
    Index("ix_flow_keys_function", "function_id"),
)

# Events that started no run of a function because of its flow control: visible, not silent.
flow_skips = Table(
    "flow_skips",
    metadata,
    Column("function_id", String(257), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("reason", String(16), nullable=False),  # flow.SkipReason
    Column("key", Text, nullable=False),  # the key's value ("" without a key)
    Column("skipped_at_ms", BigInteger, nullable=False),
    Index("ix_flow_skips_function", "function_id", "skipped_at_ms"),
    Index("ix_flow_skips_time", "skipped_at_ms"),
)

# The events of a batched run (FunctionConfig.batch_events), in arrival order; runs.event_id
# is the first of them.
run_events = Table(
    "run_events",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("event_id", String(128), nullable=False),
    Index("ix_run_events_event", "event_id"),  # the pruner keeps a batched run's events
)
