// Runs from app code: what `Stepline.start`, `invoke`, `getRun`, `waitRun` and `cancelRun` send
// (RunService.InvokeFunction, GetRun, WaitRun, CancelRun) and the records they return.
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { parseDuration, type DurationLike } from "./durations.js";
import { ClientError, InvalidUsageError, SteplineError } from "./errors.js";
import { encodeJson, MAX_EVENT_ID_LENGTH, type JsonObject } from "./events.js";
import { checkAppId, checkFunctionId, SteplineFunction } from "./function.js";
import { durationMs, toMs, type Duration, type ErrorInfo, type Timestamp } from "./proto.js";

/** The server answers a wait after at most this long; a longer wait is several calls. */
export const MAX_WAIT_MS = 60_000;
/** A call's deadline is its wait plus this margin. */
const DEADLINE_MARGIN_MS = 15_000;
const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 2_000;
const UNAVAILABLE_LIMIT_MS = 30_000;

export type RunStatus =
  | "queued" | "running" | "sleeping" | "waiting" | "completed" | "failed" | "cancelled"
  | "unknown";

const ENDED: ReadonlySet<RunStatus> = new Set(["completed", "failed", "cancelled"]);

/** Why a run failed (its ErrorInfo). */
export interface RunError { name: string; message: string; stack: string }

/** A run as the server knows it; `output` is its decoded result (null until it completes). */
export interface RunInfo<TOutput = unknown> {
  id: string;
  functionId: string;
  status: RunStatus;
  output: TOutput | null;
  error: RunError | null;
  attempt: number;
  createdAt: Date | null;
  startedAt: Date | null;
  endedAt: Date | null;
  parentRunId: string | null;
  /** Completed, failed or cancelled: status, output and error are final. */
  ended: boolean;
}

/** An awaited run failed or was cancelled; carries its status and error (ErrorInfo). */
export class RunFailedError extends SteplineError {
  override name = "RunFailedError";
  readonly runId: string;
  readonly status: RunStatus;
  readonly error: RunError;
  readonly run: RunInfo;

  constructor(run: RunInfo) {
    const error = run.error ?? { name: "Error", message: "", stack: "" };
    super(`run ${run.id} of ${run.functionId} ${run.status}: ${error.name}: ${error.message}`);
    this.run = run;
    this.runId = run.id;
    this.status = run.status;
    this.error = error;
  }
}

/** The run did not end within the timeout; it goes on (cancel it with cancelRun). */
export class RunTimeoutError extends SteplineError {
  override name = "RunTimeoutError";
  readonly runId: string;

  constructor(runId: string, timeoutMs: number) {
    super(`run ${runId} did not end within ${timeoutMs}ms; it is still going`);
    this.runId = runId;
  }
}

export interface StartOptions {
  /** Idempotency key (the trigger event's id): a repeat returns the first call's run. */
  id?: string;
}

export interface WaitOptions {
  /** Give up waiting after this long (ms or "30s"); the run goes on. Default: no limit. */
  timeout?: DurationLike;
}

export type InvokeOptions = StartOptions & WaitOptions;

// -- the wire ------------------------------------------------------------------------------------
interface RunMessage {
  id: string;
  functionId: string;
  status: string;
  output: Buffer;
  error: ErrorInfo | null;
  attempt: number;
  createdAt: Timestamp | null;
  startedAt: Timestamp | null;
  endedAt: Timestamp | null;
  parentRunId: string;
}

type Callback<T> = (error: grpc.ServiceError | null, response?: T) => void;
export interface RunServiceClient extends grpc.Client {
  InvokeFunction(request: { functionId: string; data: Buffer; id: string },
    metadata: grpc.Metadata, callback: Callback<{ runId: string }>): void;
  GetRun(request: { runId: string }, metadata: grpc.Metadata,
    callback: Callback<{ run: RunMessage }>): void;
  WaitRun(request: { runId: string; timeout: Duration }, metadata: grpc.Metadata,
    options: grpc.CallOptions, callback: Callback<{ run: RunMessage; ended: boolean }>): void;
  CancelRun(request: { runId: string; reason: string }, metadata: grpc.Metadata,
    callback: Callback<{ run: RunMessage }>): void;
}

/** A unary call as a promise; a refusal as ClientError (its gRPC code and message). */
export function call<T>(start: (callback: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((error, response) => {
      if (error) reject(new ClientError(grpc.status[error.code] ?? String(error.code), error.details));
      else resolve(response as T);
    });
  });
}

/** A function's full name: a SteplineFunction, an id in `appId` ("score"), or "app:score". */
export function functionName<TData>(appId: string, fn: SteplineFunction<TData, unknown> | string
): string {
  if (fn instanceof SteplineFunction) return fn.fullName;
  if (typeof fn !== "string") {
    throw new InvalidUsageError("function: expected a function, an id or '<appId>:<id>'");
  }
  const at = fn.lastIndexOf(":");
  if (at < 0) return `${appId}:${checkFunctionId(fn)}`;
  checkAppId(fn.slice(0, at));
  checkFunctionId(fn.slice(at + 1));
  return fn;
}

export function invokeRequest<TData>(appId: string, fn: SteplineFunction<TData, unknown> | string,
  data: JsonObject | undefined, options: StartOptions | undefined,
): { functionId: string; data: Buffer; id: string } {
  const id = options?.id;
  if (id !== undefined && (typeof id !== "string" || id.length === 0
    || id.length > MAX_EVENT_ID_LENGTH)) {
    throw new InvalidUsageError(`id: expected a string of 1 to ${MAX_EVENT_ID_LENGTH} characters`);
  }
  const payload = data ?? {};
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new InvalidUsageError(`data: expected a JSON object; got ${JSON.stringify(payload)}`);
  }
  return { functionId: functionName(appId, fn), data: Buffer.from(encodeJson(payload, "data")),
    id: id ?? "" };
}

export function checkRunId(runId: unknown): string {
  if (typeof runId !== "string" || !runId) {
    throw new InvalidUsageError(`runId: expected a run id; got ${JSON.stringify(runId)}`);
  }
  return runId;
}

export function timeoutMs(options: WaitOptions | undefined): number | undefined {
  const timeout = options?.timeout;
  return timeout === undefined ? undefined : parseDuration(timeout, "timeout", true);
}

/**
 * Wait for a run to end, one WaitRun call (at most a minute) after another. An unavailable
 * server (restarting, a replica stopping) is tried again after 100 ms, 200 ms, ... at most 2 s
 * apart, for at most 30 s in a row.
 */
export async function waitRun(client: RunServiceClient, metadata: () => grpc.Metadata,
  runId: string, limitMs: number | undefined): Promise<RunInfo> {
  checkRunId(runId);
  const end = limitMs === undefined ? undefined : Date.now() + limitMs;
  const timedOut = (): boolean => end !== undefined && Date.now() >= end;
  let unavailableSince: number | undefined;
  let pause = FIRST_RETRY_MS;
  for (;;) {
    const left = end === undefined ? MAX_WAIT_MS : Math.max(0, Math.min(end - Date.now(), MAX_WAIT_MS));
    const request = { runId, timeout: durationMs(Math.max(1, left)) };
    const options = { deadline: new Date(Date.now() + left + DEADLINE_MARGIN_MS) };
    let response: { run: RunMessage; ended: boolean };
    try {
      response = await call((callback) => client.WaitRun(request, metadata(), options, callback));
    } catch (error) {
      const now = Date.now();
      unavailableSince ??= now;
      if (!(error instanceof ClientError) || error.code !== "UNAVAILABLE"
        || now - unavailableSince > UNAVAILABLE_LIMIT_MS) throw error;
      if (timedOut()) throw new RunTimeoutError(runId, limitMs ?? 0);
      await sleep(end === undefined ? pause : Math.max(0, Math.min(pause, end - now)));
      pause = Math.min(pause * 2, MAX_RETRY_MS);
      continue;
    }
    unavailableSince = undefined;
    pause = FIRST_RETRY_MS;
    if (response.ended) return runInfo(response.run);
    if (timedOut()) throw new RunTimeoutError(runId, limitMs ?? 0);
  }
}

const STATUSES: Record<string, RunStatus> = {
  RUN_STATUS_QUEUED: "queued", RUN_STATUS_RUNNING: "running", RUN_STATUS_SLEEPING: "sleeping",
  RUN_STATUS_WAITING: "waiting", RUN_STATUS_COMPLETED: "completed", RUN_STATUS_FAILED: "failed",
  RUN_STATUS_CANCELLED: "cancelled",
};

function time(value: Timestamp | null): Date | null {
  return value === null || value === undefined ? null : new Date(toMs(value));
}

export function runInfo(run: RunMessage): RunInfo {
  const status = STATUSES[run.status] ?? "unknown";
  return {
    id: run.id, functionId: run.functionId, status,
    output: run.output.length > 0 ? JSON.parse(run.output.toString("utf8")) as unknown : null,
    error: run.error ? { name: run.error.name, message: run.error.message,
      stack: run.error.stack } : null,
    attempt: run.attempt, createdAt: time(run.createdAt), startedAt: time(run.startedAt),
    endedAt: time(run.endedAt), parentRunId: run.parentRunId || null, ended: ENDED.has(status),
  };
}

/** A completed run's output; RunFailedError for a failed or cancelled one. */
export function outcome(run: RunInfo): unknown {
  if (run.status === "completed") return run.output;
  throw new RunFailedError(run);
}
