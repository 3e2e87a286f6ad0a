// Step spans: children of the server's step attempt span, under the dispatch's traceparent.
// A minimal recording tracer stands in for an OpenTelemetry SDK (the package depends on the
// API only).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import {
  context, trace, type Attributes, type Context, type Span, type SpanContext, type SpanOptions,
  type SpanStatus, type Tracer, type TracerProvider,
} from "@opentelemetry/api";
import { RunTrace, stepSpanId } from "../src/tracing.js";

interface Recorded {
  name: string; parent: SpanContext | undefined; self: SpanContext; attributes: Attributes;
  status?: SpanStatus; ended: boolean; exceptions: number;
}

const recorded: Recorded[] = [];

function recordingSpan(name: string, options: SpanOptions, parent: SpanContext | undefined): Span {
  const self: SpanContext = { traceId: parent?.traceId ?? randomBytes(16).toString("hex"),
    spanId: randomBytes(8).toString("hex"), traceFlags: 1 };
  const entry: Recorded = { name, parent, self, attributes: { ...options.attributes },
    ended: false, exceptions: 0 };
  recorded.push(entry);
  const span = {
    spanContext: () => self,
    setAttribute: (key: string, value: unknown) => { entry.attributes[key] = value as string; return span; },
    setAttributes: () => span, addEvent: () => span, addLink: () => span, addLinks: () => span,
    setStatus: (status: SpanStatus) => { entry.status = status; return span; },
    updateName: () => span, end: () => { entry.ended = true; }, isRecording: () => true,
    recordException: () => { entry.exceptions += 1; },
  } as unknown as Span;
  return span;
}

const tracer = {
  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    return recordingSpan(name, options, trace.getSpanContext(ctx));
  },
  startActiveSpan(name: string, options: SpanOptions, ctx: Context,
    fn: (span: Span) => unknown): unknown {
    const span = recordingSpan(name, options, trace.getSpanContext(ctx));
    return context.with(trace.setSpan(ctx, span), fn, undefined, span);
  },
} as unknown as Tracer;

trace.setGlobalTracerProvider({ getTracer: () => tracer } as TracerProvider);

const TRACE_ID = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT = `00-${TRACE_ID}-b7ad6b7169203331-01`;

describe("step spans", () => {
  it("are children of the server's step attempt span, with the step's attributes", async () => {
    const run = new RunTrace("01RUN", "app:fn", "7", TRACEPARENT, 2);
    const out = await run.stepSpan("fetch-user", "fetch-user", async () => "ok");
    assert.equal(out, "ok");
    const span = recorded.at(-1);
    assert.equal(span?.name, "stepline.execute fetch-user");
    assert.equal(span?.parent?.traceId, TRACE_ID);
    assert.equal(span?.parent?.spanId, stepSpanId("01RUN", "fetch-user", "7"));
    assert.deepEqual(span?.attributes, { "stepline.function.id": "app:fn",
      "stepline.run.id": "01RUN", "stepline.step.id": "fetch-user",
      "stepline.step.name": "fetch-user", "stepline.step.attempt": 2,
      "stepline.step.outcome": "completed" });
    assert.equal(span?.ended, true);
    // The next step of the same dispatch is on its first attempt.
    await run.stepSpan("send", "send", async () => 1);
    assert.equal(recorded.at(-1)?.attributes["stepline.step.attempt"], 0);
  });

  it("record a failure and rethrow it", async () => {
    const run = new RunTrace("01RUN", "app:fn", "7", TRACEPARENT, 0);
    await assert.rejects(run.stepSpan("boom", "boom", async () => { throw new TypeError("bad"); }),
      TypeError);
    const span = recorded.at(-1);
    assert.equal(span?.attributes["stepline.step.outcome"], "failed");
    assert.equal(span?.status?.message, "TypeError: bad");
    assert.equal(span?.exceptions, 1);
  });

  it("give events sent from a step the step attempt's traceparent", () => {
    const run = new RunTrace("01RUN", "app:fn", "7", TRACEPARENT, 0);
    assert.equal(run.eventTraceparent("notify"),
      `00-${TRACE_ID}-${stepSpanId("01RUN", "notify", "7")}-01`);
    assert.equal(new RunTrace("01RUN", "app:fn", "7", "", 0).eventTraceparent("notify"), "");
  });
});
