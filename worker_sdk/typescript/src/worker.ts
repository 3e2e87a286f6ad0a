// A long-lived worker: one stream to the server, N slots, heartbeats, reconnects, drains.
import { hostname } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { ClientError, InvalidUsageError } from "./errors.js";
import { RunExecution } from "./execution.js";
import type { SteplineFunction } from "./function.js";
import {
  loadServices, toMs, type Ack, type Dispatch, type Ops, type ServerMessage, type WorkerMessage,
} from "./proto.js";

export const SDK_VERSION = "0.1.0";
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5000;
// A wrong Hello, an unknown or unfit key: the same worker would be refused again.
const REFUSALS = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.UNIMPLEMENTED,
  grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);

export interface WorkerHost {
  appId: string;
  target: string;
  functions: Map<string, SteplineFunction<never, unknown>>;
  credentials(): grpc.ChannelCredentials;
  metadata(sending?: boolean): grpc.Metadata;
}

export interface WorkerOptions {
  /** Runs executed at once (default 10). */
  slots?: number;
  /** Stable per process (default `${hostname}-${pid}`). */
  workerId?: string;
  /** How long a drain waits for the runs in hand (default 30 s). */
  drainTimeoutMs?: number;
}

type Call = grpc.ClientDuplexStream<WorkerMessage, ServerMessage>;

/** One open Connect stream. Ends when the stream breaks or the worker drains. */
class Session {
  readonly runs = new Map<string, RunExecution>(); // by run id + "\0" + target step id
  private readonly acks = new Map<number, (ack: Ack) => void>();
  private seq = 0;
  private heartbeat: NodeJS.Timeout | null = null;
  private maxPayloadBytes = 4 * 1024 * 1024;
  welcomed = false;
  draining = false;
  readonly closed: Promise<grpc.StatusObject | null>;

  constructor(private readonly worker: Worker, private readonly call: Call) {
    this.closed = new Promise((resolve) => {
      call.on("status", (status: grpc.StatusObject) => { this.abandon(); resolve(status); });
      call.on("error", () => undefined); // the status event follows and says why
    });
    call.on("data", (message: ServerMessage) => this.receive(message));
  }

  private write(message: WorkerMessage): void {
    if (!this.call.writable) return;
    this.call.write(message);
  }

  sendOps(ops: Omit<Ops, "seq">): Promise<Ack> {
    this.seq += 1;
    const seq = this.seq;
    const ack = new Promise<Ack>((resolve) => this.acks.set(seq, resolve));
    this.write({ ops: { ...ops, seq } });
    return ack;
  }

  hello(): void {
    const w = this.worker;
    this.write({ hello: {
      appId: w.host.appId, workerId: w.workerId, slots: w.slots, language: "typescript",
      sdkVersion: SDK_VERSION, functions: [...w.host.functions.values()].map((f) => f.config),
    } });
  }

  private receive(message: ServerMessage): void {
    if (message.dispatch) this.start(message.dispatch);
    else if (message.ack) {
      const resolve = this.acks.get(Number(message.ack.seq));
      this.acks.delete(Number(message.ack.seq));
      resolve?.(message.ack);
    } else if (message.cancel) this.cancel(message.cancel.runId);
    else if (message.welcome) {
      const welcome = message.welcome;
      this.maxPayloadBytes = Number(welcome.maxPayloadBytes) || this.maxPayloadBytes;
      const interval = toMs(welcome.heartbeatInterval) || 5000;
      this.heartbeat = setInterval(() => this.write({ heartbeat: {} }), interval);
      this.welcomed = true;
      this.worker.log(`connected to ${this.worker.host.target} as ${welcome.connectionId}`);
    }
  }

  private start(dispatch: Dispatch): void {
    const fn = this.worker.host.functions.get(dispatch.functionId);
    if (fn === undefined) { // the server only dispatches what Hello declared
      console.error(`stepline: dispatch for unknown function ${dispatch.functionId} ignored`);
      return;
    }
    const execution = new RunExecution(this, dispatch, fn, this.maxPayloadBytes);
    const key = `${dispatch.runId}\0${dispatch.targetStepId}`;
    this.runs.set(key, execution);
    execution.execute().catch((error: unknown) => {
      console.error(`stepline: run ${dispatch.runId} crashed in the SDK`, error);
    }).finally(() => {
      if (this.runs.get(key) === execution) this.runs.delete(key);
      if (this.draining && this.runs.size === 0) this.call.end(); // drained
    });
  }

  /** The run ended elsewhere (cancelled, timed out): stop executing it, parallel steps too. */
  private cancel(runId: string): void {
    for (const [key, execution] of this.runs) {
      if (key.startsWith(`${runId}\0`)) {
        execution.cancel();
        this.worker.log(`run ${runId} cancelled by the server`);
      }
    }
  }

  /** Take no new dispatches; close our side once the runs in hand are finished. */
  drain(): void {
    this.draining = true;
    this.write({ drain: {} });
    if (this.runs.size === 0) this.call.end();
  }

  close(): void {
    this.call.cancel();
  }

  /** The stream is gone: runs in flight cannot report; the server re-dispatches them. */
  private abandon(): void {
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    for (const execution of this.runs.values()) execution.cancel();
    for (const resolve of this.acks.values()) {
      resolve({ runId: "", seq: "0", action: "ACK_ACTION_REJECTED", errorCode: 14,
        errorMessage: "stream to the server closed" });
    }
    this.acks.clear();
  }
}

/** Pulls work for an app's functions. `await worker.run()` serves until SIGTERM/SIGINT. */
export class Worker {
  readonly slots: number;
  readonly workerId: string;
  readonly drainTimeoutMs: number;
  session: Session | null = null;
  private stopping = false;
  private wake: (() => void) | null = null;

  constructor(readonly host: WorkerHost, options: WorkerOptions = {}) {
    this.slots = options.slots ?? 10;
    if (!Number.isInteger(this.slots) || this.slots < 1) {
      throw new InvalidUsageError(`slots: expected an integer of at least 1; got ${options.slots}`);
    }
    if (host.functions.size === 0) {
      throw new InvalidUsageError(`app ${host.appId} has no functions to serve; declare them ` +
        "with app.createFunction(...) before making a worker");
    }
    this.workerId = options.workerId ?? `${hostname()}-${process.pid}`;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 30_000;
  }

  log(message: string): void {
    if (process.env.STEPLINE_QUIET !== "1") console.log(`stepline: ${message}`);
  }

  /** Serve until SIGTERM or SIGINT, then drain: finish the runs in hand and resolve. */
  async run(): Promise<void> {
    const onSignal = () => this.stop();
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    try {
      await this.serve();
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    }
  }

  /** Stop: drain the open stream (see `serve`). */
  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.wake?.();
    if (this.session !== null) void this.drain(this.session);
  }

  /** Connect (and reconnect with backoff and jitter) until `stop()`; then drain and resolve. */
  async serve(): Promise<void> {
    const { WorkerService } = loadServices();
    const client = new WorkerService(this.host.target, this.host.credentials(), {
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
      "grpc.max_send_message_length": 64 * 1024 * 1024,
      "grpc.keepalive_time_ms": 20_000, "grpc.keepalive_timeout_ms": 10_000,
    });
    let delay = RECONNECT_MIN_MS;
    try {
      while (!this.stopping) {
        const call = (client as unknown as { Connect(m: grpc.Metadata): Call })
          .Connect(this.host.metadata());
        const session = new Session(this, call);
        this.session = session;
        session.hello();
        const status = await session.closed;
        this.session = null;
        if (session.welcomed) delay = RECONNECT_MIN_MS;
        if (status !== null && REFUSALS.has(status.code)) {
          throw new ClientError(grpc.status[status.code] ?? String(status.code), status.details);
        }
        if (this.stopping) break;
        this.log(`stream to ${this.host.target} closed (${status?.details ?? ""}); ` +
          `reconnecting in ${Math.round(delay)}ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          this.wake = () => { clearTimeout(timer); resolve(); };
        });
        this.wake = null;
        delay = Math.min(RECONNECT_MAX_MS, delay * 2) * (0.8 + Math.random() * 0.4);
      }
    } finally {
      client.close();
    }
  }

  private async drain(session: Session): Promise<void> {
    this.log(`draining: finishing ${session.runs.size} run(s) in hand`);
    session.drain();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      session.closed.then(() => false),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(true), this.drainTimeoutMs); }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.log("drain timed out; the server re-dispatches the rest");
      session.close();
    }
  }
}
