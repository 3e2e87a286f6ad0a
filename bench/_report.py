"""The benchmark's report: a table per figure and backend, and the targets with their verdicts."""

from __future__ import annotations

import math
from typing import Any

from bench._sizes import Sizes
from bench._stats import fmt, table

TARGET_RUN_P50_MS = 10.0
TARGET_PG_STEPS_PER_S = 1000.0
TARGET_STEP_RATIO = 2.0
TARGET_SLEEPER_DROP_PCT = 10.0
TARGET_FANIN_RATIO = 1.5  # "p50 does not grow materially with the number of pending waits"
TARGET_TIMER_P99_MS = 100.0

Results = dict[str, dict[str, Any]]


def _target(backend: str, metric: str, value: float, unit: str, target: str,
            passed: bool) -> dict[str, Any]:
    return {"backend": backend, "metric": metric, "value": value, "unit": unit,
            "target": target, "pass": passed}


def targets(results: Results) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, r in results.items():
        p50 = r["latency"]["run_3step_ack_ms"]["p50"]
        rows.append(_target(name, "3-step run p50 (worker ack)", p50, "ms",
                            f"<= {TARGET_RUN_P50_MS:g} ms", p50 <= TARGET_RUN_P50_MS))
        if name == "postgres":
            rate = r["throughput"]["steps_per_s"]
            rows.append(_target(name, "throughput", rate, "steps/s",
                                f">= {TARGET_PG_STEPS_PER_S:,.0f} steps/s",
                                rate >= TARGET_PG_STEPS_PER_S))
        ratio = r["per_step"]["ratio"]
        rows.append(_target(name, "per-step cost ratio", ratio, "x",
                            f"<= {TARGET_STEP_RATIO:g}", ratio <= TARGET_STEP_RATIO))
        drop = r["sleepers"]["drop_pct"]
        rows.append(_target(name, f"throughput drop with {r['sleepers']['sleepers']:,} sleepers",
                            drop, "%", f"<= {TARGET_SLEEPER_DROP_PCT:g} %",
                            drop <= TARGET_SLEEPER_DROP_PCT))
        fanin = r["fanin"]
        for key, what in (("other_p50_ratio", f"{fanin['other_waits']:,} other-name"),
                          ("same_p50_ratio", f"+{fanin['same_waits']:,} same-name")):
            rows.append(_target(name, f"fan-in p50 ratio, {what} waits / none", fanin[key],
                                "x", f"<= {TARGET_FANIN_RATIO:g}",
                                fanin[key] <= TARGET_FANIN_RATIO))
        timers = r["timers"]
        late = math.nan if timers["late_ms"] is None else timers["late_ms"]["p99"]
        rows.append(_target(name, f"timer lateness p99 ({timers['missing']} never fired)", late,
                            "ms", f"<= {TARGET_TIMER_P99_MS:g} ms",
                            not timers["missing"] and late <= TARGET_TIMER_P99_MS))
    return rows


def _latency_rows(results: Results, sizes: Sizes) -> list[list[str]]:
    names = list(results)
    lat = {n: results[n]["latency"] for n in names}
    tp = {n: results[n]["throughput"] for n in names}
    ps = {n: results[n]["per_step"] for n in names}

    def dist_rows(label: str, key: str) -> list[list[str]]:
        return [[f"{label} p50", *(fmt(lat[n][key]["p50"], "ms") for n in names)],
                [f"{label} p99", *(fmt(lat[n][key]["p99"], "ms") for n in names)]]

    rows = [
        *dist_rows("event -> first step start", "event_to_first_step_ms"),
        *dist_rows("3-step run, send -> completion ack", "run_3step_ack_ms"),
        *dist_rows("3-step run, send -> GetRun COMPLETED", "run_3step_polled_ms"),
        ["  (ref) send -> last step body end p50",
         *(fmt(lat[n]["send_to_last_step_end_ms"]["p50"], "ms") for n in names)],
        ["  (ref) SendEvent call p50", *(fmt(lat[n]["send_call_ms"]["p50"], "ms") for n in names)],
        ["throughput, steps/s (best)", *(fmt(tp[n]["steps_per_s"]) for n in names)],
        ["throughput, runs/s (best)", *(fmt(tp[n]["runs_per_s"]) for n in names)],
        ["  best slots", *(str(tp[n]["best_slots"]) for n in names)],
    ]
    for i, slots in enumerate(sizes.throughput_slots):
        rows.append([f"  slots {slots}: steps/s | server, worker CPU s",
                     *(_trial(tp[n]["trials"][i]) for n in names)])
    rows += [
        [f"per step, {sizes.short_steps}-step run (median of {sizes.short_repeats})",
         *(fmt(ps[n]["short_ms_per_step"], "ms") for n in names)],
        [f"per step, {sizes.long_steps}-step run (median of {sizes.long_repeats})",
         *(fmt(ps[n]["long_ms_per_step"], "ms") for n in names)],
        ["per-step ratio (long / short)", *(fmt(ps[n]["ratio"], "x") for n in names)],
    ]
    return rows


def _trial(trial: dict[str, Any]) -> str:
    return (f"{fmt(trial['steps_per_s'])} | {fmt(trial['server_cpu_s'])}, "
            f"{fmt(trial['worker_cpu_s'])} in {fmt(trial['wall_s'], 's')}")


def _p50_p99(d: dict[str, float] | None) -> str:
    return "-" if d is None else f"{fmt(d['p50'])} / {fmt(d['p99'])} ms"


def _max(d: dict[str, float] | None) -> float | None:
    return None if d is None else d["max"]


def _timers(t: dict[str, Any]) -> str:
    missing = f", {t['missing']}/{t['runs']} never fired" if t["missing"] else ""
    return f"{_p50_p99(t['late_ms'])}{missing}"


def _waiting_rows(results: Results, sizes: Sizes) -> list[list[str]]:
    names = list(results)
    tm = {n: results[n]["timers"] for n in names}
    fi = {n: results[n]["fanin"] for n in names}
    sl = {n: results[n]["sleepers"] for n in names}
    rss = {n: sl[n]["server_rss_mib"] for n in names}
    return [
        [f"timer: 1 s sleep lateness p50 / p99, {sizes.lone_timers} alone",
         *(_timers(tm[n]["lone"]) for n in names)],
        [f"  {sizes.timers} started over 1 s", *(_timers(tm[n]) for n in names)],
        ["  max | min", *(f"{fmt(_max(tm[n]['late_ms']), 'ms')} | {fmt(tm[n]['min_ms'], 'ms')}"
                          for n in names)],
        [f"fan-in: match -> next step p50 / p99 ({sizes.fanin_matches} each), no other waits",
         *(_p50_p99(fi[n]["alone_ms"]) for n in names)],
        [f"  with {sizes.fanin_other_waits:,} waits on another event name",
         *(f"{_p50_p99(fi[n]['other_ms'])} ({fmt(fi[n]['other_p50_ratio'], 'x')})"
           for n in names)],
        [f"  and {sizes.fanin_same_waits:,} more on the same name (other keys)",
         *(f"{_p50_p99(fi[n]['same_ms'])} ({fmt(fi[n]['same_p50_ratio'], 'x')})"
           for n in names)],
        ["  waits started per s (in-process worker)",
         *(fmt(fi[n]["wait_start_rate_per_s"]) for n in names)],
        [f"sleepers: {sizes.sleepers:,} seeded, runs/s", *(fmt(sl[n]["seeding"]["runs_per_s"])
                                                         for n in names)],
        ["  seeding: server, worker CPU s in wall s",
         *(f"{fmt(sl[n]['seeding']['server_cpu_s'])}, {fmt(sl[n]['seeding']['worker_cpu_s'])} "
           f"in {fmt(sl[n]['seeding']['seed_s'], 's')}" for n in names)],
        [f"  throughput before -> after, steps/s ({sizes.sleeper_trial_runs} runs)",
         *(f"{fmt(sl[n]['steps_per_s_before'])} -> {fmt(sl[n]['steps_per_s_after'])}"
           for n in names)],
        ["  throughput drop", *(fmt(sl[n]["drop_pct"], "%") for n in names)],
        ["  (autovacuum off) after ANALYZE: steps/s, drop",
         *("-" if sl[n]["trial_after_analyze"] is None else
           f"{fmt(sl[n]['trial_after_analyze']['steps_per_s'])}, "
           f"{fmt(sl[n]['drop_after_analyze_pct'], '%')}" for n in names)],
        ["  server RSS before / seeded / after, MiB",
         *(f"{fmt(rss[n]['before'])} / {fmt(rss[n]['seeded'])} / {fmt(rss[n]['after'])}"
           for n in names)],
        ["  database size before / seeded, MiB",
         *(f"{fmt(sl[n]['database_mib']['before'])} / {fmt(sl[n]['database_mib']['seeded'])}"
           for n in names)],
        ["server log: ERROR records", *(fmt(results[n]["server_log"]["errors"])
                                        for n in names)],
    ]


def report(results: Results, sizes: Sizes) -> str:
    names = list(results)
    rows = _latency_rows(results, sizes) + _waiting_rows(results, sizes)
    out = [table(["metric", *names], rows), ""]
    out.append(table(["target", "backend", "value", "verdict"], [
        [f"{t['metric']} {t['target']}", t["backend"], fmt(t["value"], t["unit"]),
         "pass" if t["pass"] else "MISS"] for t in targets(results)]))
    for name in names:
        for error in results[name]["server_log"]["first_errors"]:
            out.append(f"[{name}] server log ERROR: {error}")
    return "\n".join(out)
