// The wire contract: protos/stepline/v1/*.proto, loaded at run time by @grpc/proto-loader (the
// package ships a copy made at build time; see scripts/copy-protos.mjs). The interfaces below
// are the fields this SDK reads and writes, named as proto-loader presents them (camelCase,
// int64 as strings, bytes as Buffers, enums as their names, `oneofs` naming the field set).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export interface Duration { seconds: string | number; nanos: number }
export interface Timestamp { seconds: string | number; nanos: number }

export interface ErrorInfo { name: string; message: string; stack: string }
export interface RetryAfter { delay: Duration }

export interface EventMessage {
  id: string;
  name: string;
  data: Buffer;
  ts?: Timestamp | null;
  user?: Buffer;
  traceparent?: string;
}

export interface StepResult {
  stepId: string;
  output?: Buffer | null;
  error?: ErrorInfo | null;
  result?: "output" | "error";
}

export interface Dispatch {
  runId: string;
  functionId: string;
  lease: string;
  attempt: number;
  maxAttempts: number;
  event: EventMessage | null;
  steps: StepResult[];
  traceparent: string;
  targetStepId: string;
  /** A batched run's events, oldest first (`event` is the first); empty for other runs. */
  events?: EventMessage[];
}

export type AckAction =
  | "ACK_ACTION_UNSPECIFIED" | "ACK_ACTION_CONTINUE" | "ACK_ACTION_RELEASE" | "ACK_ACTION_REJECTED";

export interface Ack {
  runId: string;
  seq: string;
  action: AckAction;
  errorCode: number;
  errorMessage: string;
}

export interface Welcome {
  connectionId: string;
  heartbeatInterval: Duration | null;
  leaseDuration: Duration | null;
  maxPayloadBytes: string;
}

export interface ServerMessage {
  message?: "welcome" | "dispatch" | "ack" | "cancel";
  welcome?: Welcome;
  dispatch?: Dispatch;
  ack?: Ack;
  cancel?: { runId: string; reason: string };
}

export interface Failure {
  error: ErrorInfo;
  nonRetriable?: boolean;
  retryAfter?: RetryAfter;
}

export type Op =
  | { stepCompleted: { stepId: string; name: string; output: Buffer; startedAt: Timestamp } }
  | { stepFailed: { stepId: string; name: string; startedAt?: Timestamp } & Failure }
  | { runCompleted: { output: Buffer } }
  | { runFailed: Failure }
  | { sleep: { stepId: string; name: string; until?: Timestamp; duration?: Duration } }
  | { waitForEvent: {
      stepId: string; name: string; event: string; expression: string; timeout: Duration } }
  | { invoke: {
      stepId: string; name: string; functionId: string; data: Buffer; timeout?: Duration } }
  | { sendEvents: { stepId: string; name: string; events: EventMessage[] } }
  | { planned: { steps: { stepId: string; name: string }[] } };

export interface Ops {
  runId: string;
  lease: string;
  seq: number;
  functionId: string;
  ops: Op[];
  targetStepId: string;
}

export interface Trigger {
  event?: { name: string; expression: string };
  cron?: { schedule: string; timezone: string };
}

/** FunctionConfig's flow control fields (8-15). */
export interface FlowConfig {
  concurrency: { limit: number; key: string; scope: "SCOPE_FN" | "SCOPE_ENV" | "SCOPE_ACCOUNT" }[];
  throttle?: { limit: number; period: Duration; burst: number; key: string };
  rateLimit?: { limit: number; period: Duration; key: string };
  debounce?: { period: Duration; key: string; timeout?: Duration };
  priority?: { run: string };
  batchEvents?: { maxSize: number; timeout: Duration; key: string };
  idempotency?: string;
  singleton?: { mode: "MODE_SKIP" | "MODE_CANCEL"; key: string };
}

export interface FunctionConfig extends Partial<FlowConfig> {
  id: string;
  name: string;
  triggers: Trigger[];
  retries: number;
  cancelOn: { event: string; expression: string; timeout?: Duration }[];
  timeouts: { start?: Duration; finish?: Duration };
}

export type WorkerMessage =
  | { hello: {
      appId: string; workerId: string; functions: FunctionConfig[]; slots: number;
      language: string; sdkVersion: string } }
  | { ops: Ops }
  | { heartbeat: Record<string, never> }
  | { drain: Record<string, never> };

/** The package's copy of the protos: next to dist/ (or dist-test/, one level further up). */
function protosDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 3; i += 1) {
    dir = dirname(dir);
    if (existsSync(join(dir, "protos", "stepline", "v1", "worker_service.proto"))) {
      return join(dir, "protos");
    }
  }
  throw new Error("stepline: the package's protos/ directory is missing; run `npm run build`");
}

type ServiceClient = new (
  address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions,
) => grpc.Client;

interface Services {
  WorkerService: ServiceClient;
  EventService: ServiceClient;
  RunService: ServiceClient;
}

let services: Services | undefined;

/** The generated service clients, loaded from the protos once per process. */
export function loadServices(): Services {
  if (services === undefined) {
    const definition = protoLoader.loadSync(
      ["stepline/v1/worker_service.proto", "stepline/v1/event_service.proto",
        "stepline/v1/run_service.proto"],
      { includeDirs: [protosDir()], longs: String, enums: String, defaults: true, oneofs: true },
    );
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      stepline: { v1: Services };
    };
    services = loaded.stepline.v1;
  }
  return services;
}

export function durationMs(ms: number): Duration {
  const whole = Math.floor(ms / 1000);
  return { seconds: whole, nanos: Math.round((ms - whole * 1000) * 1e6) };
}

export function toMs(value: Duration | Timestamp | null | undefined): number {
  if (value === null || value === undefined) return 0;
  return Number(value.seconds) * 1000 + Math.floor(value.nanos / 1e6);
}

export function timestamp(date: Date): Timestamp {
  return durationMs(date.getTime());
}
