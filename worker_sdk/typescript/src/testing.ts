// `stepline/testing`: run a function in-process, without a server, for its unit tests.
//
//     import { run } from "stepline/testing";
//     const result = await run(sendWelcomeEmail, {
//       event: { data: { userId: "usr_1" } }, steps: { "send-email": "msg_1" } });
//     assert.deepEqual(result.stepNames, ["fetch-user", "send-email", "mark-email-sent"]);
//
// The function runs through the SDK's own executor (the RunExecution the worker uses): this
// module plays the server's part, answering each op the execution reports and dispatching the
// run again with the memoized steps, as the server does. Steps without a stub run their real
// code; a stubbed step returns the stub (or throws it, if it is an Error) instead. Sleeps end at
// once on a fake clock, waits get the event you give (or time out), invokes return their stub,
// and failures are retried per the function's `retries` without waiting.
import { SteplineError } from "./errors.js";
import { encodeJson, eventFromMessage, eventMessage, type Event, type JsonObject } from "./events.js";
import { errorInfo, RunExecution, type SessionLink } from "./execution.js";
import type { SteplineFunction } from "./function.js";
import { toMs, type Ack, type AckAction, type Dispatch, type ErrorInfo, type EventMessage,
  type Op, type Ops, type StepResult } from "./proto.js";
import { Step, type Jsonified } from "./step.js";

/** A run that needs more dispatches than this is looping (a step failing forever, say). */
export const MAX_DISPATCHES = 1000;
const MAX_PAYLOAD_BYTES = 4 * 1024 * 1024;

/** The run could not be carried out in the test: an invoke without a stub, a bad stub, or a run
 * that never ends. `run` rejects with it; the function's own failures are `result.error`. */
export class TestingError extends SteplineError {
  override name = "TestingError";
}

/** An error as the server stores it. */
export interface ErrorRecord { name: string; message: string; stack: string }

/** A step that got its result, in the order results came. `attempts`: how many times it ran. */
export interface StepRecord {
  id: string;
  name: string;
  kind: "run" | "sleep" | "wait_for_event" | "invoke" | "send_event";
  output: unknown;
  error: ErrorRecord | null;
  attempts: number;
}

/** A sleep or sleepUntil on the fake clock. */
export interface SleepRecord {
  id: string; name: string; durationMs: number | null; until: Date | null;
  startedAt: Date; wokeAt: Date;
}

/** A waitForEvent: what it waited for, and the event it got (null: it timed out). */
export interface WaitRecord {
  id: string; name: string; event: string; if: string | null; timeoutMs: number;
  result: Event | null;
}

/** An invoke: the function and data it was called with, and its stubbed outcome. */
export interface InvokeRecord {
  id: string; name: string; functionId: string; data: unknown; output: unknown;
  error: ErrorRecord | null;
}

/** How the run ended, and what it did on the way. */
export interface RunResult<TOutput = unknown> {
  /** The function's result (as JSON carries it); null if it failed. */
  output: TOutput | null;
  error: ErrorRecord | null;
  failed: boolean;
  steps: StepRecord[];
  stepNames: string[];
  sentEvents: Event[];
  sleeps: SleepRecord[];
  waits: WaitRecord[];
  invokes: InvokeRecord[];
  dispatches: number;
  /** The fake clock when the run ended. */
  now: Date;
  /** The step with this id, else the first with this name; throws if none. */
  step(nameOrId: string): StepRecord;
}

/** A wait's stub: the event's data (and optionally name, id, user, ts), or null to time out. */
export type WaitStub = { name?: string; data?: JsonObject; id?: string; user?: JsonObject;
  ts?: Date } | null;

/** An event a test gives; `name` defaults to the function's first event trigger. */
export type TestEvent<TData> = { name?: string; data?: TData; id?: string; ts?: Date;
  user?: JsonObject };

export interface RunOptions<TData> {
  /** The trigger event; `name` defaults to the function's first event trigger. */
  event?: TestEvent<TData>;
  /** Instead of `event`: a batched run's events (`ctx.events`, oldest first; the first is
   * `ctx.event`). */
  events?: TestEvent<TData>[];
  /** step.run results by step id or name: a value replaces the callback, an Error is thrown
   * by it (and retried like any failure). Steps without a stub run for real. */
  steps?: Record<string, unknown>;
  /** The event each waitForEvent gets, by step id or name; none (or null): it times out. */
  waits?: Record<string, WaitStub>;
  /** Each invoke's result by step id or name (an Error fails it); one without a stub is a
   * TestingError. */
  invokes?: Record<string, unknown>;
  runId?: string;
  /** Where the fake clock starts (default: now); sleeps and timed-out waits move it on. */
  now?: Date;
}

type Stubs = Record<string, unknown>;

function lookup(stubs: Stubs, stepId: string, name: string): [boolean, unknown] {
  if (Object.hasOwn(stubs, stepId)) return [true, stubs[stepId]];
  if (Object.hasOwn(stubs, name)) return [true, stubs[name]];
  return [false, undefined];
}

function record(info: ErrorInfo): ErrorRecord {
  return { name: info.name, message: info.message, stack: info.stack };
}

const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value), "utf8");
const parse = (data: Buffer | null | undefined): unknown =>
  data?.length ? JSON.parse(data.toString("utf8")) as unknown : null;

/** The real step tools, except that a stubbed step's callback is replaced by its stub. */
class TestStep extends Step {
  constructor(private readonly test: TestExecution) {
    super(test);
  }

  override run<T>(name: string, fn: () => T | Promise<T>): Promise<Jsonified<Awaited<T>>> {
    if (typeof fn !== "function") return super.run(name, fn);
    return super.run(name, () => {
      const [found, stub] = lookup(this.test.stubs, this.test.executing, name);
      if (!found) return fn();
      if (stub instanceof Error) throw stub;
      return stub as T;
    });
  }
}

class TestExecution extends RunExecution {
  /** The step that last passed the gate: the one about to run here (one at a time). */
  executing = "";

  constructor(session: SessionLink, dispatch: Dispatch, fn: SteplineFunction<never, unknown>,
    readonly stubs: Stubs) {
    super(session, dispatch, fn, MAX_PAYLOAD_BYTES);
  }

  protected override newStep(): Step {
    return new TestStep(this);
  }

  override async gate(stepId: string, name: string): Promise<void> {
    await super.gate(stepId, name);
    this.executing = stepId;
  }
}

/** Plays the server: answers the ops the execution reports, dispatches the run until it ends. */
class Driver implements SessionLink {
  readonly memo = new Map<string, StepResult>();
  /** Failed attempts of the step (or body, "") now due, by target step id. */
  readonly attempts = new Map<string, number>();
  /** Target step ids of planned parallel steps to dispatch. */
  readonly queue: string[] = [];
  target = "";
  readonly steps: StepRecord[] = [];
  readonly sent: Event[] = [];
  readonly sleeps: SleepRecord[] = [];
  readonly waitRecords: WaitRecord[] = [];
  readonly invokeRecords: InvokeRecord[] = [];
  ended = false;
  output: unknown = null;
  error: ErrorRecord | null = null;
  problem: string | null = null;
  reported = false;

  constructor(readonly fn: SteplineFunction<never, unknown>, readonly event: EventMessage,
    readonly options: RunOptions<unknown>, readonly runId: string, public clock: number,
    readonly batch: EventMessage[] = []) {}

  sendOps(ops: Omit<Ops, "seq">): Promise<Ack> {
    let action: AckAction = "ACK_ACTION_CONTINUE";
    for (const op of ops.ops) {
      this.reported = true;
      if (this.problem === null && this.answer(op) === "ACK_ACTION_RELEASE") {
        action = "ACK_ACTION_RELEASE";
      }
    }
    if (this.problem !== null || this.ended) action = "ACK_ACTION_RELEASE";
    return Promise.resolve({ runId: ops.runId, seq: "0", action, errorCode: 0, errorMessage: "" });
  }

  private answer(op: Op): AckAction {
    if ("stepCompleted" in op) return this.stepCompleted(op.stepCompleted);
    if ("stepFailed" in op) return this.stepFailed(op.stepFailed);
    if ("sleep" in op) return this.sleep(op.sleep);
    if ("waitForEvent" in op) return this.waitForEvent(op.waitForEvent);
    if ("invoke" in op) return this.invoke(op.invoke);
    if ("sendEvents" in op) return this.sendEvents(op.sendEvents);
    if ("planned" in op) {
      this.queue.push(...op.planned.steps.map((s) => s.stepId));
      return "ACK_ACTION_RELEASE";
    }
    if ("runCompleted" in op) {
      this.ended = true;
      this.output = parse(op.runCompleted.output);
      return "ACK_ACTION_RELEASE";
    }
    return this.runFailed(op.runFailed);
  }

  private result(step: Omit<StepRecord, "attempts"> & { attempts?: number },
    result: StepResult): void {
    this.memo.set(step.id, result);
    this.steps.push({ attempts: 1, ...step });
    this.attempts.delete(this.target);
  }

  private get used(): number {
    return this.attempts.get(this.target) ?? 0;
  }

  /** Count a failed attempt of what this dispatch executes; true if it was the last. */
  private failedForGood(nonRetriable: boolean | undefined): boolean {
    const used = this.used + 1;
    if (nonRetriable === true || used >= this.fn.config.retries + 1) return true;
    this.attempts.set(this.target, used);
    return false;
  }

  /** A retry is due: the fake clock moves on by the delay asked for; the same step (or body)
   * is dispatched again. */
  private retry(failure: { retryAfter?: { delay: { seconds: string | number; nanos: number } } }):
    void {
    if (failure.retryAfter) this.clock += toMs(failure.retryAfter.delay);
    if (this.target) this.queue.unshift(this.target);
  }

  private stepCompleted(op: Extract<Op, { stepCompleted: unknown }>["stepCompleted"]): AckAction {
    this.result({ id: op.stepId, name: op.name, kind: "run", output: parse(op.output),
      error: null, attempts: this.used + 1 }, { stepId: op.stepId, output: op.output });
    return this.target ? "ACK_ACTION_RELEASE" : "ACK_ACTION_CONTINUE";
  }

  private stepFailed(op: Extract<Op, { stepFailed: unknown }>["stepFailed"]): AckAction {
    const attempts = this.used + 1;
    if (!this.failedForGood(op.nonRetriable)) {
      this.retry(op);
      return "ACK_ACTION_RELEASE";
    }
    this.result({ id: op.stepId, name: op.name, kind: "run", output: null,
      error: record(op.error), attempts }, { stepId: op.stepId, error: op.error });
    // The last attempt: StepError where the step was called, and the run goes on (a parallel
    // step's dispatch ends with it; the run goes on in the next one).
    return this.target ? "ACK_ACTION_RELEASE" : "ACK_ACTION_CONTINUE";
  }

  private sleep(op: Extract<Op, { sleep: unknown }>["sleep"]): AckAction {
    const startedAt = this.clock;
    const until = op.until ? toMs(op.until) : null;
    const durationMs = op.duration ? toMs(op.duration) : null;
    this.clock = until !== null ? Math.max(this.clock, until) : this.clock + (durationMs ?? 0);
    this.sleeps.push({ id: op.stepId, name: op.name, durationMs,
      until: until === null ? null : new Date(until), startedAt: new Date(startedAt),
      wokeAt: new Date(this.clock) });
    this.result({ id: op.stepId, name: op.name, kind: "sleep", output: null, error: null },
      { stepId: op.stepId, output: json(null) });
    return "ACK_ACTION_RELEASE";
  }

  private waitForEvent(op: Extract<Op, { waitForEvent: unknown }>["waitForEvent"]): AckAction {
    const timeoutMs = toMs(op.timeout);
    const [found, stub] = lookup(this.options.waits ?? {}, op.stepId, op.name);
    const value = found && stub !== null && stub !== undefined
      ? this.waitResult(op, stub as NonNullable<WaitStub>) : null;
    if (value === null) this.clock += timeoutMs;
    const event = value === null ? null : { name: value.name, data: value.data, id: value.id,
      ts: new Date(value.ts), user: value.user };
    this.waitRecords.push({ id: op.stepId, name: op.name, event: op.event,
      if: op.expression || null, timeoutMs, result: event });
    this.result({ id: op.stepId, name: op.name, kind: "wait_for_event", output: value,
      error: null },
      { stepId: op.stepId, output: json(value) });
    return "ACK_ACTION_RELEASE";
  }

  /** A wait's stub as the server stores the matched event: {id, name, data, ts (ms), user}. */
  private waitResult(op: { stepId: string; name: string; event: string },
    stub: NonNullable<WaitStub>): { id: string; name: string; data: JsonObject; ts: number;
      user: JsonObject | null } | null {
    let message: EventMessage;
    try {
      message = eventMessage({ name: op.event, ...stub }, `waits[${JSON.stringify(op.name)}]`);
    } catch (error) {
      this.problem = `waits[${JSON.stringify(op.name)}]: expected { data, name?, id?, user?, ` +
        `ts? } or null: ${(error as Error).message}`;
      return null;
    }
    const event = eventFromMessage(message);
    return { id: event.id || `evt_${op.stepId}`, name: event.name, data: event.data,
      ts: event.ts?.getTime() ?? this.clock, user: event.user };
  }

  private invoke(op: Extract<Op, { invoke: unknown }>["invoke"]): AckAction {
    const [found, stub] = lookup(this.options.invokes ?? {}, op.stepId, op.name);
    if (!found) {
      this.problem = `step ${JSON.stringify(op.name)} invokes function ` +
        `${JSON.stringify(op.functionId)}: give its result with invokes: ` +
        `{ ${JSON.stringify(op.name)}: ... } (a value, or an Error to fail it)`;
      return "ACK_ACTION_RELEASE";
    }
    const base = { id: op.stepId, name: op.name, functionId: op.functionId,
      data: parse(op.data) ?? {} };
    if (stub instanceof Error) {
      const info = errorInfo(stub);
      const error = record(info);
      this.invokeRecords.push({ ...base, output: null, error });
      this.result({ id: op.stepId, name: op.name, kind: "invoke", output: null, error },
        { stepId: op.stepId, error: { ...info, stack: "" } });
      return "ACK_ACTION_RELEASE";
    }
    const output = JSON.parse(encodeJson(stub, `invokes[${JSON.stringify(op.name)}]`)) as unknown;
    this.invokeRecords.push({ ...base, output, error: null });
    this.result({ id: op.stepId, name: op.name, kind: "invoke", output, error: null },
      { stepId: op.stepId, output: json(output) });
    return "ACK_ACTION_RELEASE";
  }

  private sendEvents(op: Extract<Op, { sendEvents: unknown }>["sendEvents"]): AckAction {
    const events = op.events.map((m) => eventFromMessage(m));
    this.sent.push(...events);
    const ids = { ids: events.map((e) => e.id) };
    this.result({ id: op.stepId, name: op.name, kind: "send_event", output: ids, error: null },
      { stepId: op.stepId, output: json(ids) });
    return "ACK_ACTION_CONTINUE";
  }

  private runFailed(op: Extract<Op, { runFailed: unknown }>["runFailed"]): AckAction {
    if (this.failedForGood(op.nonRetriable)) {
      this.ended = true;
      this.error = record(op.error);
    } else {
      this.retry(op);
    }
    return "ACK_ACTION_RELEASE";
  }

  dispatch(): Dispatch {
    this.target = this.queue.shift() ?? "";
    return { runId: this.runId, functionId: this.fn.id, lease: "1", attempt: this.used,
      maxAttempts: this.fn.config.retries + 1, event: this.event,
      steps: [...this.memo.values()], traceparent: "", targetStepId: this.target,
      events: this.batch };
  }

  async drive(): Promise<number> {
    for (let count = 1; count <= MAX_DISPATCHES; count += 1) {
      this.reported = false;
      const stubs = this.options.steps ?? {};
      await new TestExecution(this, this.dispatch(), this.fn, stubs).execute();
      if (this.problem !== null) throw new TestingError(this.problem);
      if (this.ended) return count;
      if (!this.reported) {
        throw new TestingError(`dispatch ${count} of the run ended without reporting anything`);
      }
    }
    throw new TestingError(`the run did not end within ${MAX_DISPATCHES} dispatches`);
  }
}

function triggerEvent(fn: SteplineFunction<never, unknown>,
  event: RunOptions<unknown>["event"], now: number): EventMessage {
  const name = event?.name ?? fn.config.triggers.find((t) => t.event)?.event?.name ??
    "stepline/test";
  const message = eventMessage({ ...event, name }, "event");
  message.id ||= "evt_test";
  message.ts ??= { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 };
  return message;
}

/**
 * Run `fn` to its end in this process, with no server, and resolve to what happened. The
 * function's own failure is `result.error`; `run` rejects only with TestingError (or
 * InvalidUsageError for a bad event), when the run cannot be carried out.
 */
export async function run<TData, TResult>(fn: SteplineFunction<TData, TResult>,
  options: RunOptions<TData> = {}): Promise<RunResult<Jsonified<Awaited<TResult>>>> {
  const start = (options.now ?? new Date()).getTime();
  const fnAny = fn as unknown as SteplineFunction<never, unknown>;
  if (options.events !== undefined && (options.event !== undefined || !options.events.length)) {
    throw new TestingError("events: give a batch of at least one event, and no `event` (the " +
      "batch's first event is the trigger)");
  }
  const batch = (options.events ?? []).map((e, i) => {
    const message = triggerEvent(fnAny, e, start);
    if (message.id === "evt_test") message.id = `evt_test_${i}`;
    return message;
  });
  const driver = new Driver(fnAny, batch[0] ?? triggerEvent(fnAny, options.event, start),
    options as RunOptions<unknown>, options.runId ?? "run_test", start, batch);
  const dispatches = await driver.drive();
  const steps = driver.steps;
  return {
    output: driver.output as Jsonified<Awaited<TResult>> | null, error: driver.error,
    failed: driver.error !== null, steps, stepNames: steps.map((s) => s.name),
    sentEvents: driver.sent, sleeps: driver.sleeps, waits: driver.waitRecords,
    invokes: driver.invokeRecords, dispatches, now: new Date(driver.clock),
    step(nameOrId: string): StepRecord {
      const found = steps.find((s) => s.id === nameOrId) ?? steps.find((s) => s.name === nameOrId);
      if (found === undefined) {
        throw new Error(`no step ${JSON.stringify(nameOrId)}; the run's steps: ` +
          steps.map((s) => s.name).join(", "));
      }
      return found;
    },
  };
}
