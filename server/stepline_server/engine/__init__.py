"""The engine decides: which functions an event starts, what each op does to a run.

Where things happen:

    a run is started             starts.start_runs, called by lifecycle.ingest (events), ops
                                 (step.invoke), cron.CronScheduler (ticks), replays
    a run is leased to a worker  attempts.claim (Engine.claim), or start_runs's placement
    a lease is renewed           Engine.heartbeat: only the items the connection holds
    a lease is fenced            ops.apply_report: the one check of owner and lease
    a step result is committed   ops.apply_many, then _write: one set-based write per batch
    a retry is decided           attempts.py: retry_due, and the five other attempt endings
    an attempt is charged        attempts.py: lost workers (release), refused reports
                                 (after_refusal, give_back), never a takeover or a server's
                                 death (claim, release_server)
    a suspension begins          ops._Report._suspend (sleep, wait, invoke), ._plan (parallel)
    a suspension ends            lifecycle.resume (event, invoked run), .expire_waits (timer),
                                 ops._parallel_step_done (the last parallel step's result)
    an event matches a wait      matching.match, indexed by event name and equality key
    a filter's cost is bounded   expressions.compile_expression (shape, at registration),
                                 Expression.matches_within (each evaluation); see cel_cost.py
    a run's size is limited      ops._Report._too_many_steps and ._completed (run_limits.py)
    a resent report is re-acked  resends.acknowledge_resends
    a deadline is armed          starts._new_item (start), the claim statement (finish)
    a deadline fires             timeouts.DeadlineWatch -> Engine.expire_deadlines
    a run ends                   ops._Report._finish (its worker's report), lifecycle.end_runs
                                 (cancel, timeout, lost workers); then lifecycle.after_end
    telemetry is told            observe.Observers, after the commit (Tx.after_commit)
    history is pruned            retention.Pruner: ended runs past their retention, then
                                 events no run refers to (store/pruning.py), batch by batch
    an event id is used again    store/events.insert: a row runs refer to is moved aside

Everything that takes a transaction runs on the store's writer thread: `Database.write` and
`submit_batched` jobs, and every function here that takes a `Tx` or a `TxContext`. Those never
await and never touch the event loop; what must follow the commit (telling a worker, waking
dispatch, telemetry) is queued with `Tx.after_commit`. Reads go through `Database.read`.
"""

from stepline_server.engine.core import Engine

__all__ = ["Engine"]
