// A function as the SDK holds it: its handler and its declared configuration.
import { parseDuration, type DurationLike } from "./durations.js";
import { InvalidUsageError } from "./errors.js";
import { flowConfig, type FlowOptions } from "./flow.js";
import type { Context } from "./execution.js";
import type { JsonObject } from "./events.js";
import { durationMs, type FunctionConfig, type Trigger as TriggerMessage } from "./proto.js";

export const FUNCTION_FAILED = "stepline/function.failed";
export const DEFAULT_RETRIES = 3;
const MAX_ID_LENGTH = 128;
const APP_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const FUNCTION_ID = /^[A-Za-z0-9][A-Za-z0-9_./@-]*$/;

/** An event name, `{ event, if }` (a CEL filter over `event`) or `{ cron, tz }`. */
export type TriggerInput = string | { event: string; if?: string } | { cron: string; tz?: string };

/** Cancel an unfinished run when a matching event arrives (`if`: CEL over `event`, `async`). */
export interface CancelOn { event: string; if?: string; timeout?: DurationLike }

export interface Timeouts { start?: DurationLike; finish?: DurationLike }

export type Handler<TData, TResult> = (ctx: Context<TData>) => Promise<TResult> | TResult;

/** Flow control (concurrency, throttle, rateLimit, debounce, priority, batchEvents,
 * idempotency, singleton): see flow.ts and the README's "Function options". */
export interface FunctionOptions extends FlowOptions {
  /** Unique within the app: letters, digits and _ . / @ -, starting with a letter or digit. */
  id: string;
  name?: string;
  trigger: TriggerInput | TriggerInput[];
  /** Retries after the first attempt, per step and for the function body. Default 3. */
  retries?: number;
  cancelOn?: CancelOn | CancelOn[];
  timeouts?: Timeouts;
  /** Run as function `${id}-failure` when a run fails for good; its event's data is
   * { function_id, run_id, error, event }. */
  onFailure?: Handler<FailureData, unknown>;
}

export interface FailureData {
  function_id: string;
  run_id: string;
  error: { name: string; message: string; stack?: string };
  event: JsonObject;
  [key: string]: unknown;
}

/** A declared function; `step.invoke({ function })` accepts it. */
export class SteplineFunction<TData = JsonObject, TResult = unknown> {
  constructor(
    readonly id: string,
    readonly appId: string,
    readonly handler: Handler<TData, TResult>,
    readonly config: FunctionConfig,
  ) {}

  /** "<appId>:<id>": how runs, listings and system events name it. */
  get fullName(): string {
    return `${this.appId}:${this.id}`;
  }
}

export function checkAppId(value: unknown): string {
  if (typeof value !== "string" || !value) {
    throw new InvalidUsageError("appId: expected a non-empty string");
  }
  if (value.length > MAX_ID_LENGTH || !APP_ID.test(value)) {
    throw new InvalidUsageError(`appId: ${JSON.stringify(value)} is not a valid app id: use at ` +
      `most ${MAX_ID_LENGTH} letters, digits and _ . -, starting with a letter or digit`);
  }
  return value;
}

export function checkFunctionId(value: unknown): string {
  if (typeof value !== "string" || !value) {
    throw new InvalidUsageError("function id: expected a non-empty string");
  }
  if (value.length > MAX_ID_LENGTH || !FUNCTION_ID.test(value)) {
    throw new InvalidUsageError(`function id: ${JSON.stringify(value)} is not a valid function ` +
      `id: use at most ${MAX_ID_LENGTH} letters, digits and _ . / @ -, starting with a letter ` +
      "or digit (no ':', which separates the app id in a function's full name)");
  }
  return value;
}

function text(value: unknown, what: string): string {
  if (typeof value !== "string" || !value) {
    throw new InvalidUsageError(`${what}: expected a non-empty string; got ${JSON.stringify(value)}`);
  }
  return value;
}

function optionalText(value: unknown, what: string): string {
  return value === undefined ? "" : text(value, what);
}

function keys(item: object, allowed: string[], what: string): void {
  const unknown = Object.keys(item).filter((k) => !allowed.includes(k));
  if (unknown.length) {
    throw new InvalidUsageError(
      `${what}: unknown key(s) ${unknown.join(", ")}; expected keys among ${allowed.join(", ")}`);
  }
}

function trigger(item: unknown, what: string): TriggerMessage {
  if (typeof item === "string") return { event: { name: text(item, what), expression: "" } };
  if (item !== null && typeof item === "object") {
    if ("event" in item && !("cron" in item)) {
      keys(item, ["event", "if"], what);
      const t = item as { event: unknown; if?: unknown };
      return { event: { name: text(t.event, `${what}.event`),
        expression: optionalText(t.if, `${what}.if`) } };
    }
    if ("cron" in item && !("event" in item)) {
      keys(item, ["cron", "tz"], what);
      const t = item as { cron: unknown; tz?: unknown };
      return { cron: { schedule: text(t.cron, `${what}.cron`),
        timezone: optionalText(t.tz, `${what}.tz`) } };
    }
  }
  throw new InvalidUsageError(`${what}: expected an event name, { event, if } or { cron, tz }`);
}

function cancelOn(items: CancelOn[], what: string): FunctionConfig["cancelOn"] {
  return items.map((item, i) => {
    const where = `${what}[${i}]`;
    if (item === null || typeof item !== "object") {
      throw new InvalidUsageError(`${where}: expected { event, if?, timeout? }`);
    }
    keys(item, ["event", "if", "timeout"], where);
    const message: FunctionConfig["cancelOn"][number] = {
      event: text(item.event, `${where}.event`), expression: optionalText(item.if, `${where}.if`),
    };
    if (item.timeout !== undefined) {
      message.timeout = durationMs(parseDuration(item.timeout, `${where}.timeout`));
    }
    return message;
  });
}

function timeouts(value: Timeouts | undefined, what: string): FunctionConfig["timeouts"] {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object") {
    throw new InvalidUsageError(`${what}: expected { start?, finish? }`);
  }
  keys(value, ["start", "finish"], what);
  const result: FunctionConfig["timeouts"] = {};
  if (value.start !== undefined) result.start = durationMs(parseDuration(value.start, `${what}.start`));
  if (value.finish !== undefined) {
    result.finish = durationMs(parseDuration(value.finish, `${what}.finish`));
  }
  return result;
}

/** Validate `options` (InvalidUsageError naming the field) and build the FunctionConfig. */
export function functionConfig(options: FunctionOptions): FunctionConfig {
  if (options === null || typeof options !== "object") {
    throw new InvalidUsageError("function options: expected an object with id and trigger");
  }
  const id = checkFunctionId(options.id);
  const where = `function ${JSON.stringify(id)}`;
  const retries = options.retries ?? DEFAULT_RETRIES;
  if (!Number.isInteger(retries) || retries < 0) {
    throw new InvalidUsageError(`${where}: retries must be a non-negative integer; got ${retries}`);
  }
  if (options.trigger === undefined) {
    throw new InvalidUsageError(`${where}: trigger: a trigger is required, e.g. "user/signup"`);
  }
  const triggers = Array.isArray(options.trigger) ? options.trigger : [options.trigger];
  if (triggers.length === 0) throw new InvalidUsageError(`${where}: trigger: an empty list`);
  const cancels = options.cancelOn === undefined ? []
    : Array.isArray(options.cancelOn) ? options.cancelOn : [options.cancelOn];
  return {
    id,
    name: options.name === undefined ? id : text(options.name, `${where}: name`),
    triggers: triggers.map((t, i) => trigger(t, `${where}: trigger[${i}]`)),
    retries,
    cancelOn: cancelOn(cancels, `${where}: cancelOn`),
    timeouts: timeouts(options.timeouts, `${where}: timeouts`),
    ...flowConfig(options, where, cancels.length > 0),
  };
}

/** The companion run when `fn` fails for good: triggered by the stepline/function.failed event
 * the server sends for it, which names it by full name. */
export function failureConfig(config: FunctionConfig, fullName: string): FunctionConfig {
  return {
    id: `${config.id}-failure`,
    name: `${config.name} (on failure)`,
    triggers: [{ event: { name: FUNCTION_FAILED,
      expression: `event.data.function_id == ${JSON.stringify(fullName)}` } }],
    retries: config.retries,
    cancelOn: [],
    timeouts: {},
  };
}
