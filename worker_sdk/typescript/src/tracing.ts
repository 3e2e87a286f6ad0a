// Step spans through @opentelemetry/api: a span around each step execution, child of the
// server's span for that step attempt, under the dispatch's traceparent. The server does not
// send the attempt span; its id is derived from (run id, step id, lease) as the server does:
// the first 8 bytes (big-endian) of sha256("{run_id}\0{step_id}\0{lease}"), 1 if zero. Without
// an OpenTelemetry SDK registered in the process, the spans are no-ops.
import { createHash } from "node:crypto";
import {
  context as otelContext, SpanStatusCode, trace, type Context as OtelContext, type SpanContext,
} from "@opentelemetry/api";

const tracer = () => trace.getTracer("stepline");
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

export function stepSpanId(runId: string, stepId: string, lease: string): string {
  const hex = createHash("sha256").update(`${runId}\0${stepId}\0${lease}`).digest("hex").slice(0, 16);
  return /^0+$/.test(hex) ? "0000000000000001" : hex;
}

export function parseTraceparent(value: string): SpanContext | null {
  const match = TRACEPARENT.exec(value);
  if (match === null || /^0+$/.test(match[1] ?? "0") || /^0+$/.test(match[2] ?? "0")) return null;
  return { traceId: match[1] ?? "", spanId: match[2] ?? "", traceFlags: parseInt(match[3] ?? "0", 16),
    isRemote: true };
}

export function header(span: SpanContext): string {
  return `00-${span.traceId}-${span.spanId}-${span.traceFlags.toString(16).padStart(2, "0")}`;
}

export class RunTrace {
  private readonly parent: SpanContext | null;
  private attempt: number;

  constructor(private readonly runId: string, private readonly functionId: string,
    private readonly lease: string, traceparent: string, attempt: number) {
    this.parent = parseTraceparent(traceparent);
    // Dispatch.attempt counts attempts of the first step this dispatch executes; a later step
    // in the same dispatch is on its first attempt.
    this.attempt = attempt;
  }

  /** What the function body runs in: user spans outside steps nest under the run span. */
  bodyContext(): OtelContext {
    const active = otelContext.active();
    return this.parent === null ? active : trace.setSpanContext(active, this.parent);
  }

  stepAttempt(stepId: string): SpanContext | null {
    if (this.parent === null) return null;
    return { traceId: this.parent.traceId, spanId: stepSpanId(this.runId, stepId, this.lease),
      traceFlags: this.parent.traceFlags, isRemote: true };
  }

  /** Run `fn` inside the span of one step execution. */
  async stepSpan<T>(stepId: string, name: string, fn: () => Promise<T>): Promise<T> {
    const attempt = this.attempt;
    this.attempt = 0;
    const parent = this.stepAttempt(stepId);
    const base = otelContext.active();
    const ctx = parent === null ? base : trace.setSpanContext(base, parent);
    return tracer().startActiveSpan(`stepline.execute ${name}`, { attributes: {
      "stepline.function.id": this.functionId, "stepline.run.id": this.runId,
      "stepline.step.id": stepId, "stepline.step.name": name, "stepline.step.attempt": attempt,
    } }, ctx, async (span) => {
      try {
        const result = await fn();
        span.setAttribute("stepline.step.outcome", "completed");
        return result;
      } catch (error) {
        const e = error instanceof Error ? error : new Error(String(error));
        span.recordException(e);
        span.setStatus({ code: SpanStatusCode.ERROR, message: `${e.name}: ${e.message}` });
        span.setAttribute("stepline.step.outcome", "failed");
        throw error;
      } finally {
        span.end();
      }
    });
  }

  /** For events of a sendEvent step: the user's active span, else the server's step span. */
  eventTraceparent(stepId: string): string {
    const current = trace.getSpanContext(otelContext.active());
    if (current !== undefined && trace.isSpanContextValid(current)
      && current.spanId !== this.parent?.spanId) {
      return header(current);
    }
    const step = this.stepAttempt(stepId);
    return step === null ? "" : header(step);
  }
}
