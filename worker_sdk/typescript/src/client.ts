// `Stepline`: what an app touches — declare functions, send events, start a worker.
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { context as otelContext, trace } from "@opentelemetry/api";
import { ClientError, InvalidUsageError } from "./errors.js";
import { eventMessage, type EventInput, type JsonObject } from "./events.js";
import {
  checkAppId, failureConfig, functionConfig, SteplineFunction, type FailureData,
  type FunctionOptions, type Handler,
} from "./function.js";
import { loadServices, type EventMessage } from "./proto.js";
import {
  call, checkRunId, invokeRequest, outcome, runInfo, timeoutMs, waitRun, type InvokeOptions,
  type RunInfo, type RunServiceClient, type StartOptions, type WaitOptions,
} from "./runs.js";
import type { Jsonified } from "./step.js";
import { header } from "./tracing.js";
import { Worker, type WorkerHost, type WorkerOptions } from "./worker.js";

export interface SteplineOptions {
  /** A slug: letters, digits, _ . -; the server names this app's functions "<appId>:<id>". */
  appId: string;
  /** Default STEPLINE_URL, then 127.0.0.1:7288. https:// or grpcs:// turns TLS on. */
  url?: string;
  /** PEM file of the CAs that may sign the server's certificate (STEPLINE_TLS_CA). */
  tlsCa?: string;
  /** This app's key, for a server that requires keys (STEPLINE_SIGNING_KEY). */
  signingKey?: string;
  /** A key that only sends events, preferred for sending (STEPLINE_EVENT_KEY). */
  eventKey?: string;
}

/** An app's handle on Stepline. */
export class Stepline implements WorkerHost {
  readonly appId: string;
  readonly target: string;
  readonly functions = new Map<string, SteplineFunction<never, unknown>>();
  private readonly tls: boolean;
  private readonly tlsCa: string | undefined;
  private readonly signingKey: string | undefined;
  private readonly eventKey: string | undefined;
  private eventClient: grpc.Client | null = null;
  private runClient: RunServiceClient | null = null;

  constructor(options: SteplineOptions) {
    this.appId = checkAppId(options?.appId);
    let url = (options.url || process.env.STEPLINE_URL || "127.0.0.1:7288").trim();
    this.tlsCa = options.tlsCa || process.env.STEPLINE_TLS_CA || undefined;
    this.tls = /^(https|grpcs):\/\//.test(url) || this.tlsCa !== undefined;
    url = url.replace(/^(https|grpcs|http|grpc):\/\//, "").replace(/\/+$/, "");
    this.target = url;
    this.signingKey = options.signingKey || process.env.STEPLINE_SIGNING_KEY || undefined;
    this.eventKey = options.eventKey || process.env.STEPLINE_EVENT_KEY || undefined;
  }

  /**
   * Declare a function. `TData` types its trigger event's data:
   * `app.createFunction<{ userId: string }>({ id: "welcome", trigger: "user/signup" }, ...)`.
   * Bad options throw InvalidUsageError here.
   */
  createFunction<TData = JsonObject, TResult = unknown>(options: FunctionOptions,
    handler: Handler<TData, TResult>): SteplineFunction<TData, TResult> {
    const config = functionConfig(options);
    if (typeof handler !== "function") {
      throw new InvalidUsageError(`function ${JSON.stringify(config.id)}: expected a handler`);
    }
    const fn = new SteplineFunction(config.id, this.appId, handler, config);
    const declared: SteplineFunction<never, unknown>[] = [fn as SteplineFunction<never, unknown>];
    if (options.onFailure !== undefined) {
      if (typeof options.onFailure !== "function") {
        throw new InvalidUsageError(`function ${JSON.stringify(config.id)}: onFailure must be a function`);
      }
      const failure = failureConfig(config, fn.fullName);
      declared.push(new SteplineFunction<FailureData, unknown>(failure.id, this.appId,
        options.onFailure, failure) as SteplineFunction<never, unknown>);
    }
    for (const f of declared) {
      if (this.functions.has(f.id)) {
        throw new InvalidUsageError(`function id ${JSON.stringify(f.id)} is already declared in ` +
          `app ${JSON.stringify(this.appId)}`);
      }
    }
    for (const f of declared) this.functions.set(f.id, f);
    return fn;
  }

  credentials(): grpc.ChannelCredentials {
    if (!this.tls) return grpc.credentials.createInsecure();
    return grpc.credentials.createSsl(this.tlsCa === undefined ? null : readFileSync(this.tlsCa));
  }

  metadata(sending = false): grpc.Metadata {
    const metadata = new grpc.Metadata();
    const key = sending ? (this.eventKey ?? this.signingKey) : this.signingKey;
    if (key !== undefined) metadata.set("authorization", `Bearer ${key}`);
    return metadata;
  }

  /** Send one event; resolves to its id once the server has durably committed it. */
  async send<TData extends JsonObject>(event: EventInput<TData>): Promise<string> {
    const [id] = await this.sendMany([event]);
    return id ?? "";
  }

  /** Send events together: all are committed, or none. */
  sendMany(events: EventInput[]): Promise<string[]> {
    const messages: EventMessage[] = events.map((e, i) => eventMessage(e, `events[${i}]`));
    const span = trace.getSpanContext(otelContext.active());
    if (span !== undefined && trace.isSpanContextValid(span)) {
      for (const m of messages) m.traceparent ||= header(span);
    }
    if (this.eventClient === null) {
      const { EventService } = loadServices();
      this.eventClient = new EventService(this.target, this.credentials());
    }
    const client = this.eventClient as unknown as { SendEvent(request: unknown,
      metadata: grpc.Metadata, callback: (error: grpc.ServiceError | null,
        response?: { ids: string[] }) => void): void };
    return new Promise((resolve, reject) => {
      client.SendEvent({ events: messages }, this.metadata(true), (error, response) => {
        if (error) reject(new ClientError(grpc.status[error.code] ?? String(error.code), error.details));
        else resolve(response?.ids ?? []);
      });
    });
  }

  // -- runs from app code (runs.ts); sent with the signing key, which must act for the
  // function's app ----------------------------------------------------------------------------

  /**
   * Start a run of `fn` (a function, the id of one of this app's, or "other-app:id") with
   * `data` as its event's data; resolves to the run's id once the server has committed it.
   * An unknown function rejects with ClientError NOT_FOUND.
   */
  async start<TData extends JsonObject>(fn: SteplineFunction<TData, unknown> | string,
    data?: TData,
    options?: StartOptions): Promise<string> {
    const request = invokeRequest(this.appId, fn, data, options);
    const client = this.runs();
    const response = await call<{ runId: string }>(
      (callback) => client.InvokeFunction(request, this.metadata(), callback));
    return response.runId;
  }

  /**
   * Start a run (as `start`) and resolve to its output once it completes: typed by the
   * function's result (as JSON carries it) when given the function itself. A failed or
   * cancelled run rejects with RunFailedError (its error); no end within `timeout` rejects with
   * RunTimeoutError (with the run's id): the run goes on.
   */
  invoke<TData extends JsonObject, TResult>(fn: SteplineFunction<TData, TResult>, data: TData,
    options?: InvokeOptions): Promise<Jsonified<Awaited<TResult>>>;
  invoke<TOutput = unknown>(fn: string, data?: JsonObject, options?: InvokeOptions
  ): Promise<TOutput>;
  async invoke(fn: SteplineFunction<never, unknown> | string, data?: JsonObject,
    options?: InvokeOptions): Promise<unknown> {
    const limit = timeoutMs(options);
    const runId = await this.start(fn as SteplineFunction<JsonObject, unknown> | string, data,
      options);
    return outcome(await waitRun(this.runs(), () => this.metadata(), runId, limit));
  }

  /** The run once it has ended; RunTimeoutError when it has not within `timeout`. */
  waitRun(runId: string, options?: WaitOptions): Promise<RunInfo> {
    const limit = timeoutMs(options);
    return waitRun(this.runs(), () => this.metadata(), runId, limit);
  }

  /** A run's status, output and error (ClientError NOT_FOUND: no such run). */
  async getRun(runId: string): Promise<RunInfo> {
    const client = this.runs();
    const request = { runId: checkRunId(runId) };
    const response = await call<{ run: Parameters<typeof runInfo>[0] }>(
      (callback) => client.GetRun(request, this.metadata(), callback));
    return runInfo(response.run);
  }

  /** Cancel an unfinished run (ClientError FAILED_PRECONDITION once it ended). */
  async cancelRun(runId: string, reason = ""): Promise<RunInfo> {
    const client = this.runs();
    const request = { runId: checkRunId(runId), reason };
    const response = await call<{ run: Parameters<typeof runInfo>[0] }>(
      (callback) => client.CancelRun(request, this.metadata(), callback));
    return runInfo(response.run);
  }

  private runs(): RunServiceClient {
    if (this.runClient === null) {
      const { RunService } = loadServices();
      this.runClient = new RunService(this.target, this.credentials()) as RunServiceClient;
    }
    return this.runClient;
  }

  /** A worker for this app's functions; `await worker.run()` serves until SIGTERM/SIGINT. */
  worker(options: WorkerOptions = {}): Worker {
    return new Worker(this, options);
  }

  /** Close the client's channel (a worker closes its own). */
  close(): void {
    this.eventClient?.close();
    this.eventClient = null;
    this.runClient?.close();
    this.runClient = null;
  }
}
