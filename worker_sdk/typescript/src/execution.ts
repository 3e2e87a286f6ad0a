// Executes one dispatched run: replays the function with memoized steps, reports ops.
//
// When the run is no longer this worker's to execute (a step suspended it, the server released
// or rejected it, it was cancelled, or the stream closed), the step the function awaits never
// settles: user code cannot catch its way past a suspension, and the body's promise is dropped.
import { context as otelContext } from "@opentelemetry/api";
import { NonDeterminismError, NonRetriableError, RetryAfterError } from "./errors.js";
import { encodeJson, eventFromMessage, type Event, type JsonObject } from "./events.js";
import type { SteplineFunction } from "./function.js";
import { StepIds } from "./ids.js";
import { durationMs, type Ack, type Dispatch, type ErrorInfo, type Failure, type Op,
  type Ops, type StepResult } from "./proto.js";
import { Step } from "./step.js";
import { RunTrace } from "./tracing.js";

/** How long a completed step's checkpoint may wait for the next boundary before it is sent. */
const DEFER_MS = 20;
/** A parallel step's dispatch: how long other new steps wait for the target to be reached. */
const TARGET_WAIT_MS = 5000;

/** What a function receives: its trigger event, its run, and the step tools. */
export interface Context<TData = JsonObject> {
  event: Event<TData>;
  runId: string;
  /** The function's id within its app. */
  functionId: string;
  /** 0 for the first attempt of the step (or body) this dispatch executes. */
  attempt: number;
  step: Step;
  /** Aborted when the run is no longer this worker's (cancelled, suspended, stream lost). */
  signal: AbortSignal;
}

/** Thrown inside the SDK to unwind once the run is released; never reaches user code. */
export const RELEASED: unique symbol = Symbol("stepline.released");

export interface SessionLink {
  sendOps(ops: Omit<Ops, "seq">): Promise<Ack>;
}

interface Deferred<T> { promise: Promise<T>; resolve: (value: T) => void }

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => { resolve = r; });
  return { promise, resolve };
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

export function errorInfo(error: unknown): ErrorInfo {
  if (error instanceof Error) {
    return { name: error.name || "Error", message: error.message,
      stack: (error.stack ?? "").slice(-8000) };
  }
  return { name: "Error", message: String(error), stack: "" };
}

/** How a thrown value maps onto StepFailed/RunFailed fields. */
export function failureFields(error: unknown): Failure {
  const fields: Failure = { error: errorInfo(error) };
  if (error instanceof NonRetriableError) fields.nonRetriable = true;
  else if (error instanceof RetryAfterError) fields.retryAfter = { delay: durationMs(error.delayMs) };
  return fields;
}

export class RunExecution {
  readonly runId: string;
  readonly lease: string;
  readonly targetStepId: string;
  readonly ids = new StepIds();
  readonly memo: Map<string, StepResult>;
  readonly visited = new Set<string>();
  readonly trace: RunTrace;
  readonly abort = new AbortController();
  nondeterminism: NonDeterminismError | null = null;
  private readonly releasedSignal = deferred<void>();
  private pending: Promise<Ack> | null = null;
  private deferredOps: Op[] = [];
  private flushTimer: NodeJS.Timeout | null = null;
  private readonly targetReached = deferred<void>();
  private targetFailed = false;
  private arrivals: [string, string][] = [];
  private planned: Deferred<void> | null = null;

  constructor(private readonly session: SessionLink, readonly dispatch: Dispatch,
    readonly fn: SteplineFunction<never, unknown>, readonly maxPayloadBytes: number) {
    this.runId = dispatch.runId;
    this.lease = dispatch.lease;
    this.targetStepId = dispatch.targetStepId;
    this.memo = new Map(dispatch.steps.map((s) => [s.stepId, s]));
    this.trace = new RunTrace(dispatch.runId, fn.fullName, dispatch.lease, dispatch.traceparent,
      dispatch.attempt);
  }

  get released(): boolean {
    return this.abort.signal.aborted;
  }

  // -- talking to the server -------------------------------------------------------------------
  /** Report deferred checkpoints and `ops` in one message; resolves to its ack. */
  send(ops: Op[]): Promise<Ack> {
    if (this.released) throw RELEASED;
    const all = [...this.deferredOps, ...ops];
    this.deferredOps = [];
    if (this.flushTimer !== null) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }
    const pending = this.session.sendOps({ runId: this.runId, lease: this.lease,
      functionId: this.fn.id, ops: all, targetStepId: this.targetStepId });
    this.pending = pending;
    return pending;
  }

  defer(op: Op): void {
    this.deferredOps.push(op);
    // Code that dawdles before its next step must not leave the result uncommitted.
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = null;
      if (this.deferredOps.length && !this.released) void this.send([]);
    }, DEFER_MS);
  }

  /** Commit what is deferred and wait for it; unwind if the run is no longer ours. */
  async settle(): Promise<void> {
    if (this.released) throw RELEASED;
    if (this.deferredOps.length) void this.send([]);
    await this.acknowledged();
  }

  /** Once earlier reports are acknowledged, send `ops` (with the deferred ones) for its ack. */
  async report(ops: Op[]): Promise<Ack> {
    await this.acknowledged();
    return this.send(ops);
  }

  private async acknowledged(): Promise<void> {
    for (let pending = this.pending; pending !== null; pending = this.pending) {
      const ack = await pending;
      if (ack.action !== "ACK_ACTION_CONTINUE") {
        this.release(ack);
        throw RELEASED;
      }
      if (this.pending === pending) return; // nothing was sent while we waited
    }
  }

  /** The server answered RELEASE or REJECTED: the run is no longer ours to execute. */
  release(ack: Ack): void {
    if (ack.action === "ACK_ACTION_REJECTED" && !this.released) {
      console.warn(`stepline: run ${this.runId}: server rejected ops: ${ack.errorMessage}`);
    }
    this.cancel();
  }

  cancel(): void {
    if (!this.released) {
      this.abort.abort();
      this.releasedSignal.resolve();
    }
  }

  checkSize(text: string, what: string): void {
    const size = Buffer.byteLength(text, "utf8");
    if (size > this.maxPayloadBytes) {
      throw new NonRetriableError(
        `${what} is ${size} bytes, over the server's limit of ${this.maxPayloadBytes}`);
    }
  }

  // -- replay ----------------------------------------------------------------------------------
  /** The id of the next step called `name` (marked reached), with its memoized result. */
  nextStep(name: string): [string, StepResult | undefined] {
    if (this.nondeterminism !== null) throw this.nondeterminism;
    const stepId = this.ids.next(name);
    this.visited.add(stepId);
    return [stepId, this.memo.get(stepId)];
  }

  private unvisited(): string[] {
    return [...this.memo.keys()].filter((id) => !this.visited.has(id));
  }

  /** Before a new step does anything: NonDeterminismError if memoized steps were not reached
   * first. Branches awaited together (Promise.all) reach their memoized steps in turn: they get
   * until the pending promise callbacks have run before the judgement. */
  async checkNewStep(stepId: string): Promise<void> {
    if (this.unvisited().length === 0) return;
    await tick();
    const unvisited = this.unvisited();
    if (unvisited.length) {
      this.nondeterminism = new NonDeterminismError(`run ${this.runId}: new step ` +
        `${JSON.stringify(stepId)} was reached before the recorded step(s) ${unvisited
          .map((s) => JSON.stringify(s)).join(", ")}; steps must be called in the same order on ` +
        "every attempt (did the code change while the run was in flight?)");
      throw this.nondeterminism;
    }
  }

  /** Decide where a new step executes: returns if here and now; throws RELEASED if elsewhere
   * (one of several new steps awaited together, reported as a plan; or a sibling of the
   * parallel step this dispatch executes). */
  async gate(stepId: string, name: string): Promise<void> {
    if (this.targetStepId) {
      if (stepId === this.targetStepId) {
        this.targetReached.resolve();
        return;
      }
      await this.waitForTarget();
    }
    const group = this.arrivals;
    group.push([stepId, name]);
    await tick(); // steps awaited together (Promise.all) arrive in the same turn
    if (group.length === 1) {
      if (this.arrivals === group) this.arrivals = [];
      return;
    }
    if (this.arrivals === group) this.arrivals = [];
    const planned = (this.planned ??= deferred<void>());
    if (stepId !== group[0]?.[0]) {
      await planned.promise;
      throw RELEASED;
    }
    try {
      this.release(await this.report([{ planned: {
        steps: group.map(([id, n]) => ({ stepId: id, name: n })) } }]));
    } finally {
      planned.resolve();
    }
    throw RELEASED;
  }

  private async waitForTarget(): Promise<never> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.targetReached.promise.then(() => false),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(true), TARGET_WAIT_MS); }),
    ]);
    clearTimeout(timer);
    if (timedOut && !this.released) await this.failTarget(this.targetNotReached());
    await this.releasedSignal.promise;
    throw RELEASED;
  }

  private targetNotReached(): NonDeterminismError {
    return new NonDeterminismError(`parallel step ${JSON.stringify(this.targetStepId)} was not ` +
      "reached on replay; the function's code may have changed since the steps were planned");
  }

  /** Report the target step failed, once (the server refuses a step reported twice). */
  private async failTarget(error: Error): Promise<void> {
    if (this.targetFailed || this.released) return;
    this.targetFailed = true;
    this.release(await this.send([{ stepFailed: {
      stepId: this.targetStepId, name: this.targetStepId, ...failureFields(error) } }]));
  }

  // -- running the function --------------------------------------------------------------------
  /** The step tools the function gets (stepline/testing gives its own, which answer stubs). */
  protected newStep(): Step {
    return new Step(this);
  }

  async execute(): Promise<void> {
    try {
      await otelContext.with(this.trace.bodyContext(), () => this.executeBody());
    } catch (error) {
      if (error !== RELEASED) throw error;
    }
  }

  private async executeBody(): Promise<void> {
    const ctx: Context<never> = {
      event: eventFromMessage(this.dispatch.event) as Event<never>, runId: this.runId,
      functionId: this.fn.id, attempt: this.dispatch.attempt, step: this.newStep(),
      signal: this.abort.signal,
    };
    const body = (async () => this.fn.handler(ctx))().then(
      (value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error }));
    const outcome = await Promise.race([body, this.releasedSignal.promise.then(() => null)]);
    if (outcome === null || this.released) return;
    let op: Op;
    try {
      if (!outcome.ok) throw outcome.error;
      const text = encodeJson(outcome.value, "function output", NonRetriableError);
      this.checkSize(text, "function output");
      op = { runCompleted: { output: Buffer.from(text, "utf8") } };
    } catch (error) {
      op = { runFailed: failureFields(error) };
    }
    if (this.nondeterminism !== null) op = { runFailed: failureFields(this.nondeterminism) };
    if (this.released) return;
    if (this.targetStepId) { // the body ended without reaching the step to execute
      await this.failTarget(this.targetNotReached());
      return;
    }
    this.release(await this.send([op]));
  }
}
