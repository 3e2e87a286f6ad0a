export { Stepline, type SteplineOptions } from "./client.js";
export type { Context } from "./execution.js";
export type { Step, Jsonified } from "./step.js";
export {
  SteplineFunction, FUNCTION_FAILED, type CancelOn, type FailureData, type FunctionOptions,
  type Handler, type Timeouts, type TriggerInput,
} from "./function.js";
export type { Event, EventInput, JsonObject, JsonValue } from "./events.js";
export type { DurationLike } from "./durations.js";
export type {
  BatchEvents, Concurrency, Debounce, FlowOptions, Priority, RateLimit, Singleton, Throttle,
} from "./flow.js";
export { Worker, SDK_VERSION, type WorkerOptions } from "./worker.js";
export {
  ClientError, InvalidUsageError, NonDeterminismError, NonRetriableError, RetryAfterError,
  StepError, SteplineError,
} from "./errors.js";
export { StepIds } from "./ids.js";
export { stepSpanId } from "./tracing.js";
export { sentEventId } from "./events.js";
export {
  RunFailedError, RunTimeoutError, type InvokeOptions, type RunError, type RunInfo, type RunStatus,
  type StartOptions, type WaitOptions,
} from "./runs.js";
