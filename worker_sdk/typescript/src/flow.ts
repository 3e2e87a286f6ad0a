// Flow control options of createFunction (concurrency, throttle, rateLimit, debounce, priority,
// batchEvents, idempotency, singleton): checked when the function is defined with the server's
// bounds (server/stepline_server/flow.py; the README lists them), sent as FunctionConfig fields
// 8-15. Keys and the priority are CEL over `event`, compiled by the server at registration.
import { parseDuration, type DurationLike } from "./durations.js";
import { InvalidUsageError } from "./errors.js";
import { durationMs, type FlowConfig } from "./proto.js";

const MAX_CONCURRENCY_LIMITS = 2;
const MAX_LIMIT = 100_000;
const SECOND = 1000;
const DAY = 86_400_000;
const MAX_THROTTLE_PERIOD = 7 * DAY;
const MAX_RATE_LIMIT_PERIOD = DAY;
const MAX_DEBOUNCE = 7 * DAY;
const MAX_BATCH_SIZE = 1000;
const MAX_BATCH_TIMEOUT = 10 * 60 * SECOND;
const MAX_KEY_EXPRESSION = 1024;

/** At most `limit` steps of the runs sharing `key` execute at once (sleeping and waiting runs
 * hold no slot); scope "env"/"account" shares the slots with every function using the same key
 * value and needs a key. */
export interface Concurrency { limit: number; key?: string; scope?: "fn" | "env" | "account" }
/** At most `limit` run starts per `period` (GCRA), `burst` (default 1) more at once; the excess
 * waits in order. */
export interface Throttle { limit: number; period: DurationLike; burst?: number; key?: string }
/** At most `limit` runs start per `period`; the events over it start none (recorded as skips). */
export interface RateLimit { limit: number; period: DurationLike; key?: string }
/** One run once the events of a key stop for `period`, with the last event; `timeout` caps the
 * delay since the first. */
export interface Debounce { period: DurationLike; key?: string; timeout?: DurationLike }
/** One run receives up to `maxSize` events (ctx.events), started when full or at `timeout`. */
export interface BatchEvents { maxSize: number; timeout: DurationLike; key?: string }
/** One unfinished run per key: a new event starts nothing ("skip") or cancels it ("cancel"). */
export interface Singleton { mode: "skip" | "cancel"; key?: string }
/** `run`: CEL giving seconds; the run is queued as if enqueued that much earlier (±600). */
export interface Priority { run: string }

export interface FlowOptions {
  concurrency?: number | Concurrency | Concurrency[];
  throttle?: Throttle;
  rateLimit?: RateLimit;
  debounce?: Debounce;
  priority?: string | Priority;
  batchEvents?: BatchEvents;
  /** CEL key: at most one run per key value per 24 hours. */
  idempotency?: string;
  singleton?: Singleton;
}

type Where = (field: string) => string;

function fields(value: unknown, allowed: string[], what: string): Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new InvalidUsageError(`${what}: expected { ${allowed.join(", ")} }`);
  }
  const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
  if (unknown.length) {
    throw new InvalidUsageError(
      `${what}: unknown key(s) ${unknown.join(", ")}; expected keys among ${allowed.join(", ")}`);
  }
  return value as Record<string, unknown>;
}

function integer(value: unknown, low: number, high: number, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < low || value > high) {
    throw new InvalidUsageError(
      `${what}: must be an integer between ${low} and ${high}; got ${JSON.stringify(value)}`);
  }
  return value;
}

function shown(ms: number): string {
  for (const [unit, size] of [["d", DAY], ["h", 3_600_000], ["m", 60_000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms / 1000}s`;
}

function span(value: unknown, low: number, high: number, what: string): number {
  const ms = parseDuration(value, what);
  if (ms < low || ms > high) {
    throw new InvalidUsageError(
      `${what}: must be between ${shown(low)} and ${shown(high)}; got ${JSON.stringify(value)}`);
  }
  return ms;
}

function key(value: unknown, what: string): string {
  if (value === undefined) return "";
  if (typeof value !== "string" || !value.trim()) {
    throw new InvalidUsageError(`${what}: expected a CEL expression over event, e.g. ` +
      `"event.data.customer_id"; got ${JSON.stringify(value)}`);
  }
  if (value.length > MAX_KEY_EXPRESSION) {
    throw new InvalidUsageError(`${what}: at most ${MAX_KEY_EXPRESSION} characters; got ${value.length}`);
  }
  return value;
}

const SCOPES = { fn: "SCOPE_FN", env: "SCOPE_ENV", account: "SCOPE_ACCOUNT" } as const;
const MODES = { skip: "MODE_SKIP", cancel: "MODE_CANCEL" } as const;

function concurrency(value: FlowOptions["concurrency"], at: Where): FlowConfig["concurrency"] {
  if (value === undefined) return [];
  const list = Array.isArray(value);
  const items: unknown[] = list ? value : [value];
  if (items.length > MAX_CONCURRENCY_LIMITS) {
    throw new InvalidUsageError(
      `${at("concurrency")}: at most ${MAX_CONCURRENCY_LIMITS} limits; got ${items.length}`);
  }
  return items.map((item, i) => {
    const where = list ? at(`concurrency[${i}]`) : at("concurrency");
    const c = fields(typeof item === "number" ? { limit: item } : item,
      ["limit", "key", "scope"], where);
    const scope = c.scope ?? "fn";
    if (typeof scope !== "string" || !(scope in SCOPES)) {
      throw new InvalidUsageError(
        `${where}.scope: expected "fn", "env" or "account"; got ${JSON.stringify(scope)}`);
    }
    const k = key(c.key, `${where}.key`);
    if (scope !== "fn" && !k) {
      throw new InvalidUsageError(`${where}.key: a key is required with scope "${scope}"`);
    }
    return { limit: integer(c.limit, 1, MAX_LIMIT, `${where}.limit`), key: k,
      scope: SCOPES[scope as keyof typeof SCOPES] };
  });
}

function priority(value: FlowOptions["priority"], at: Where): string {
  if (value === undefined) return "";
  if (typeof value === "string") return key(value, at("priority"));
  return key(fields(value, ["run"], at("priority")).run, `${at("priority")}.run`);
}

/** FunctionConfig fields 8-15 of `options`; InvalidUsageError naming the option and field. */
export function flowConfig(options: FlowOptions, where: string, hasCancelOn: boolean): FlowConfig {
  const at: Where = (field) => `${where}: ${field}`;
  const config: FlowConfig = { concurrency: concurrency(options.concurrency, at) };
  if (options.throttle !== undefined) {
    const t = fields(options.throttle, ["limit", "period", "burst", "key"], at("throttle"));
    config.throttle = {
      limit: integer(t.limit, 1, MAX_LIMIT, `${at("throttle")}.limit`),
      period: durationMs(span(t.period, SECOND, MAX_THROTTLE_PERIOD, `${at("throttle")}.period`)),
      burst: integer(t.burst ?? 1, 0, MAX_LIMIT, `${at("throttle")}.burst`),
      key: key(t.key, `${at("throttle")}.key`),
    };
  }
  if (options.rateLimit !== undefined) {
    const r = fields(options.rateLimit, ["limit", "period", "key"], at("rateLimit"));
    config.rateLimit = {
      limit: integer(r.limit, 1, MAX_LIMIT, `${at("rateLimit")}.limit`),
      period: durationMs(span(r.period, SECOND, MAX_RATE_LIMIT_PERIOD,
        `${at("rateLimit")}.period`)),
      key: key(r.key, `${at("rateLimit")}.key`),
    };
  }
  if (options.debounce !== undefined) {
    const d = fields(options.debounce, ["period", "key", "timeout"], at("debounce"));
    const period = span(d.period, SECOND, MAX_DEBOUNCE, `${at("debounce")}.period`);
    config.debounce = { period: durationMs(period), key: key(d.key, `${at("debounce")}.key`) };
    if (d.timeout !== undefined) {
      config.debounce.timeout = durationMs(
        span(d.timeout, period, MAX_DEBOUNCE, `${at("debounce")}.timeout`));
    }
  }
  const run = priority(options.priority, at);
  if (run) config.priority = { run };
  if (options.batchEvents !== undefined) {
    const b = fields(options.batchEvents, ["maxSize", "timeout", "key"], at("batchEvents"));
    config.batchEvents = {
      maxSize: integer(b.maxSize, 2, MAX_BATCH_SIZE, `${at("batchEvents")}.maxSize`),
      timeout: durationMs(span(b.timeout, SECOND, MAX_BATCH_TIMEOUT,
        `${at("batchEvents")}.timeout`)),
      key: key(b.key, `${at("batchEvents")}.key`),
    };
  }
  if (options.idempotency !== undefined) {
    config.idempotency = key(options.idempotency, at("idempotency"));
  }
  if (options.singleton !== undefined) {
    const s = fields(options.singleton, ["mode", "key"], at("singleton"));
    if (typeof s.mode !== "string" || !(s.mode in MODES)) {
      throw new InvalidUsageError(
        `${at("singleton")}.mode: expected "skip" or "cancel"; got ${JSON.stringify(s.mode)}`);
    }
    config.singleton = { mode: MODES[s.mode as keyof typeof MODES],
      key: key(s.key, `${at("singleton")}.key`) };
  }
  if (config.batchEvents !== undefined) {
    const others: [string, boolean][] = [["debounce", config.debounce !== undefined],
      ["priority", config.priority !== undefined], ["singleton", config.singleton !== undefined],
      ["cancelOn", hasCancelOn]];
    for (const [other, present] of others) {
      if (present) throw new InvalidUsageError(`${at("batchEvents")} cannot be combined with ${other}`);
    }
  }
  return config;
}
