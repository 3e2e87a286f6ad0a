/**
 * Errors of the Stepline SDK.
 *
 *     SteplineError
 *     ├── NonRetriableError     throw it to fail a step (or the run) at once, without retries
 *     │   ├── StepError         a step failed for good; thrown where the step was called
 *     │   ├── InvalidUsageError a bad argument to the SDK, e.g. a bad duration
 *     │   └── NonDeterminismError  the function's code changed between attempts of a run
 *     ├── RetryAfterError       throw it to retry after a delay you choose
 *     └── ClientError           the server refused a request (carries the gRPC code)
 */
import { parseDelay, type DurationLike } from "./durations.js";

export class SteplineError extends Error {
  override name = "SteplineError";
}

/** Fail now: the step (or function) is not retried. */
export class NonRetriableError extends SteplineError {
  override name = "NonRetriableError";
}

/** A step exhausted its retries (or threw NonRetriableError). Catch it to recover. */
export class StepError extends NonRetriableError {
  override name = "StepError";
  readonly stepId: string;
  readonly errorName: string;
  readonly errorMessage: string;
  readonly errorStack: string;

  constructor(stepId: string, errorName: string, errorMessage: string, errorStack = "") {
    super(`step ${JSON.stringify(stepId)} failed: ${errorName}: ${errorMessage}`);
    this.stepId = stepId;
    this.errorName = errorName;
    this.errorMessage = errorMessage;
    this.errorStack = errorStack;
  }
}

/** An SDK call or declaration got an argument it cannot use; retrying cannot help. */
export class InvalidUsageError extends NonRetriableError {
  override name = "InvalidUsageError";
}

/** Replay reached a new step while steps recorded by earlier attempts were not reached. */
export class NonDeterminismError extends NonRetriableError {
  override name = "NonDeterminismError";
}

/**
 * Retry, but not before `delay`: milliseconds, a duration string ("30s") or a Date. A time
 * already past retries at once.
 */
export class RetryAfterError extends SteplineError {
  override name = "RetryAfterError";
  readonly delayMs: number;

  constructor(message: string, delay: DurationLike | Date) {
    super(message);
    this.delayMs = delay instanceof Date
      ? Math.max(0, delay.getTime() - Date.now())
      : parseDelay(delay, "RetryAfterError delay");
  }
}

/** The server answered a request with an error status. */
export class ClientError extends SteplineError {
  override name = "ClientError";
  readonly code: string;
  readonly details: string;

  constructor(code: string, details: string) {
    super(`${code}: ${details}`);
    this.code = code;
    this.details = details;
  }
}
