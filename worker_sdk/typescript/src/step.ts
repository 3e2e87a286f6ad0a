// The step tools: `await step.run("name", () => ...)`. Each call is a step with an id derived
// from its name (and occurrence); a completed step returns its recorded result on replay. Call
// steps in the same order on every attempt.
import { parseDuration, parseTime, type DurationLike } from "./durations.js";
import { InvalidUsageError, StepError } from "./errors.js";
import {
  checkText, encodeJson, eventFromJson, MAX_NAME_LENGTH, stepEvents, type Event, type EventInput,
  type JsonObject,
} from "./events.js";
import type { RunExecution } from "./execution.js";
import { failureFields, RELEASED } from "./execution.js";
import { SteplineFunction } from "./function.js";
import { durationMs, timestamp, type Op, type StepResult } from "./proto.js";
import { NonRetriableError } from "./errors.js";

const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

/** A step's result as JSON carries it (what a replay returns). */
export type Jsonified<T> = T extends Date ? string
  : T extends (...args: never[]) => unknown ? never
  : T extends undefined ? null
  : T extends object ? { [K in keyof T]: Jsonified<T[K]> } : T;

function memoized(stepId: string, memo: StepResult): unknown {
  if (memo.error) {
    throw new StepError(stepId, memo.error.name, memo.error.message, memo.error.stack);
  }
  return memo.output?.length ? JSON.parse(memo.output.toString("utf8")) as unknown : null;
}

function checkName(name: unknown): asserts name is string {
  if (typeof name !== "string" || !name) {
    throw new InvalidUsageError(`step name: expected a non-empty string; got ${JSON.stringify(name)}`);
  }
  checkText(name, "step name", MAX_NAME_LENGTH);
}

function checkText2(value: unknown, what: string): asserts value is string {
  if (typeof value !== "string" || !value) {
    throw new InvalidUsageError(`${what}: expected a non-empty string; got ${JSON.stringify(value)}`);
  }
}

const now = () => timestamp(new Date());

export class Step {
  constructor(private readonly ex: RunExecution) {}

  /** A step's promise for user code: one that never settles once the run is released. */
  private guard<T>(work: () => Promise<T>): Promise<T> {
    return work().catch((error: unknown) => {
      if (error === RELEASED) return never<T>();
      throw error;
    });
  }

  /**
   * Run `fn` once for this run and return its (JSON) result. On replay the stored result is
   * returned without calling `fn`. A failure is retried with backoff; after the last attempt a
   * StepError is thrown here.
   */
  run<T>(name: string, fn: () => T | Promise<T>): Promise<Jsonified<Awaited<T>>> {
    return this.guard(() => this.runStep(name, fn)) as Promise<Jsonified<Awaited<T>>>;
  }

  private async runStep(name: string, fn: () => unknown): Promise<unknown> {
    checkName(name);
    if (typeof fn !== "function") {
      throw new InvalidUsageError(`step ${JSON.stringify(name)}: expected a function to run`);
    }
    const ex = this.ex;
    const [stepId, memo] = ex.nextStep(name);
    if (memo !== undefined) return memoized(stepId, memo);
    await ex.checkNewStep(stepId);
    await ex.gate(stepId, name);
    await ex.settle();
    const startedAt = now();
    let output: string;
    try {
      output = await ex.trace.stepSpan(stepId, name, async () => {
        const text = encodeJson(await fn(), `output of step ${JSON.stringify(stepId)}`,
          NonRetriableError);
        ex.checkSize(text, `output of step ${JSON.stringify(stepId)}`);
        return text;
      });
    } catch (error) {
      if (error === RELEASED) throw error;
      const fields = failureFields(error);
      const ack = await ex.send([{ stepFailed: { stepId, name, startedAt, ...fields } }]);
      if (ack.action !== "ACK_ACTION_CONTINUE") {
        ex.release(ack);
        throw RELEASED;
      }
      // CONTINUE: that was the last attempt; the step failed for good and the run goes on.
      ex.memo.set(stepId, { stepId, error: fields.error });
      throw new StepError(stepId, fields.error.name, fields.error.message, fields.error.stack);
    }
    const done: Op = { stepCompleted: { stepId, name, output: Buffer.from(output, "utf8"),
      startedAt } };
    if (ex.targetStepId) { // a parallel step's dispatch ends with its result
      ex.release(await ex.send([done]));
      throw RELEASED;
    }
    ex.defer(done); // reported at the next boundary: the next step, or with the run's result
    return JSON.parse(output) as unknown;
  }

  /** Pause the run for `duration` (ms, or "30s", "1h30m", "2d"…). Holds no worker meanwhile. */
  sleep(name: string, duration: DurationLike): Promise<void> {
    return this.guard(async () => {
      checkName(name);
      const ms = parseDuration(duration, `step ${JSON.stringify(name)}: duration`, true);
      await this.suspend(name, (stepId) => ({ sleep: { stepId, name, duration: durationMs(ms) } }));
    });
  }

  /** Pause the run until `when` (a Date, or ISO 8601 with Z or an offset). */
  sleepUntil(name: string, when: Date | string): Promise<void> {
    return this.guard(async () => {
      checkName(name);
      const until = parseTime(when, `step ${JSON.stringify(name)}: when`);
      await this.suspend(name, (stepId) => ({ sleep: { stepId, name, until: timestamp(until) } }));
    });
  }

  /**
   * Wait for the next event called `event`, sent after this step began, for which the CEL
   * filter `if` is true (`event` is the run's trigger, `async` the candidate). Returns that
   * event, or null after `timeout`.
   */
  waitForEvent<TData = JsonObject>(name: string, options: { event: string; timeout: DurationLike;
    if?: string }): Promise<Event<TData> | null> {
    return this.guard(async () => {
      checkName(name);
      const where = `step ${JSON.stringify(name)}`;
      checkText2(options?.event, `${where}: event`);
      if (options.if !== undefined) checkText2(options.if, `${where}: if`);
      const timeout = durationMs(parseDuration(options.timeout, `${where}: timeout`));
      const result = await this.suspend(name, (stepId) => ({ waitForEvent: {
        stepId, name, event: options.event, expression: options.if ?? "", timeout } }));
      return eventFromJson(result) as Event<TData> | null;
    });
  }

  /**
   * Start a run of `function` (a declared function, the id of one in this app, or "app:fn")
   * with `data` as its event's data, and return that run's output. Its failure, a missing
   * function, or `timeout` (error "InvokeTimeout") throw StepError here.
   */
  invoke<TResult = unknown>(name: string, options: {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    function: SteplineFunction<any, unknown> | string;
    data?: JsonObject; timeout?: DurationLike }): Promise<TResult> {
    return this.guard(async () => {
      checkName(name);
      const where = `step ${JSON.stringify(name)}`;
      const target = options?.function;
      const functionId = target instanceof SteplineFunction ? target.fullName : target;
      checkText2(functionId, `${where}: function`);
      const data = options.data ?? {};
      if (data === null || typeof data !== "object" || Array.isArray(data)) {
        throw new InvalidUsageError(`${where}: data: expected a JSON object`);
      }
      const payload = encodeJson(data, `${where}: data`);
      this.ex.checkSize(payload, `data of ${where}`);
      const timeout = options.timeout === undefined ? undefined
        : durationMs(parseDuration(options.timeout, `${where}: timeout`));
      return await this.suspend(name, (stepId) => ({ invoke: {
        stepId, name, functionId, data: Buffer.from(payload, "utf8"),
        ...(timeout === undefined ? {} : { timeout }) } })) as TResult;
    });
  }

  /** Send one event or several exactly once for this run; resolves to { ids }. An event
   * without an id gets one derived from the run and the step, so a replay cannot send it
   * twice. */
  sendEvent(name: string, events: EventInput | EventInput[]): Promise<{ ids: string[] }> {
    return this.guard(async () => {
      checkName(name);
      const ex = this.ex;
      const [stepId, memo] = ex.nextStep(name);
      if (memo !== undefined) return memoized(stepId, memo) as { ids: string[] };
      const messages = stepEvents(events, ex.runId, stepId, `step ${JSON.stringify(name)}: events`);
      const traceparent = ex.trace.eventTraceparent(stepId);
      messages.forEach((message, index) => {
        message.traceparent = traceparent;
        ex.checkSize(message.data.toString("utf8"),
          `data of event ${index} of step ${JSON.stringify(name)}`);
      });
      await ex.checkNewStep(stepId);
      const ack = await ex.report([{ sendEvents: { stepId, name, events: messages } }]);
      if (ack.action !== "ACK_ACTION_CONTINUE") {
        ex.release(ack);
        throw RELEASED;
      }
      return { ids: messages.map((m) => m.id) };
    });
  }

  /** A step the server completes later (sleep, wait, invoke): on replay its result; else
   * report the op and drop the run, which the server dispatches again when it is done. */
  private async suspend(name: string, op: (stepId: string) => Op): Promise<unknown> {
    const ex = this.ex;
    const [stepId, memo] = ex.nextStep(name);
    if (memo !== undefined) return memoized(stepId, memo);
    await ex.checkNewStep(stepId);
    const ack = await ex.report([op(stepId)]);
    if (ack.action === "ACK_ACTION_CONTINUE") {
      console.error(`stepline: run ${ex.runId}: the server answered CONTINUE to suspending ` +
        `step ${JSON.stringify(stepId)}; dropping the run`);
    }
    ex.release(ack);
    throw RELEASED;
  }
}
