// Unit tests of the SDK's pure parts (node:test). The protocol itself is tested end to end by
// tests/e2e/test_typescript.py, with a real server and a real worker process.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseDuration, parseTime } from "../src/durations.js";
import { InvalidUsageError, NonRetriableError, RetryAfterError, StepError } from "../src/errors.js";
import { encodeJson, eventMessage, sentEventId, stepEvents } from "../src/events.js";
import { failureFields } from "../src/execution.js";
import { functionConfig, failureConfig } from "../src/function.js";
import { StepIds } from "../src/ids.js";
import { Stepline } from "../src/index.js";
import { stepSpanId, parseTraceparent } from "../src/tracing.js";

describe("step ids", () => {
  it("derives name, name:1, … exactly as the Python SDK does", () => {
    const ids = new StepIds();
    // The Python SDK's StepIds gives these for the same sequence of names.
    assert.deepEqual(["a", "a", "a:1", "a", "b", "a:3", "a"].map((n) => ids.next(n)),
      ["a", "a:1", "a:1:1", "a:2", "b", "a:3", "a:4"]);
  });
});

describe("ids shared with the Python SDK and the server", () => {
  it("derives a sent event's id as the Python SDK does", () => {
    assert.equal(sentEventId("01RUN", "send:1", 2), "48326c98c6c2f1a29ce7604bbe303089");
  });
  it("derives the step attempt span id as the server does", () => {
    assert.equal(stepSpanId("01RUN", "fetch-user", "7"), "9ba4b8710b2dd91e");
  });
  it("parses a traceparent and refuses an invalid one", () => {
    const span = parseTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert.equal(span?.traceId, "0af7651916cd43dd8448eb211c80319c");
    assert.equal(span?.traceFlags, 1);
    assert.equal(parseTraceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"), null);
    assert.equal(parseTraceparent("garbage"), null);
  });
});

describe("durations", () => {
  it("takes milliseconds and unit strings", () => {
    assert.equal(parseDuration(1500, "d"), 1500);
    assert.equal(parseDuration("1h30m", "d"), 5_400_000);
    assert.equal(parseDuration("500ms", "d"), 500);
    assert.equal(parseDuration("2d", "d"), 172_800_000);
    assert.equal(parseDuration(0, "d", true), 0);
  });
  it("refuses bad ones, naming the field", () => {
    assert.throws(() => parseDuration("soon", "step \"x\": timeout"),
      (e: Error) => e instanceof InvalidUsageError && e.message.startsWith('step "x": timeout'));
    assert.throws(() => parseDuration(-1, "d"), InvalidUsageError);
    assert.throws(() => parseDuration(0, "d"), /at least 1ms/);
    assert.throws(() => parseDuration("400d", "d"), /366 days/);
    assert.throws(() => parseDuration(Number.NaN, "d"), InvalidUsageError);
  });
  it("takes times with a zone only", () => {
    assert.equal(parseTime("2030-01-31T09:00:00+01:00", "w").toISOString(), "2030-01-31T08:00:00.000Z");
    assert.throws(() => parseTime("2030-01-31T09:00:00", "w"), /with Z or an offset/);
  });
});

describe("errors", () => {
  it("maps thrown values onto StepFailed fields", () => {
    assert.deepEqual(failureFields(new NonRetriableError("no")).nonRetriable, true);
    assert.equal(failureFields(new StepError("s", "E", "m")).nonRetriable, true);
    assert.deepEqual(failureFields(new RetryAfterError("later", "2.5s")).retryAfter,
      { delay: { seconds: 2, nanos: 500_000_000 } });
    assert.equal(new RetryAfterError("past", new Date(0)).delayMs, 0);
    const plain = failureFields("a string");
    assert.deepEqual([plain.error.name, plain.error.message, plain.nonRetriable],
      ["Error", "a string", undefined]);
    assert.equal(failureFields(new TypeError("bad")).error.name, "TypeError");
  });
});

describe("events", () => {
  it("validates events and derives missing ids", () => {
    const [a, b] = stepEvents([{ name: "x/y", data: { n: 1 } }, { name: "x/z", id: "mine" }],
      "01RUN", "send:1", "events");
    assert.equal(a?.id, sentEventId("01RUN", "send:1", 0));
    assert.equal(a?.data.toString(), '{"n":1}');
    assert.equal(b?.id, "mine");
    assert.throws(() => eventMessage({ name: "x", extra: 1 }, "e"), /unknown key\(s\) extra/);
    assert.throws(() => eventMessage({ name: "" }, "e"), /e\.name/);
    assert.throws(() => eventMessage({ name: "x", data: [1] }, "e"), /e\.data: expected a JSON object/);
    assert.throws(() => stepEvents([], "r", "s", "events"), /non-empty/);
  });
  it("refuses what is not JSON", () => {
    assert.throws(() => encodeJson({ x: Number.POSITIVE_INFINITY }, "out"), /not JSON-serializable/);
    assert.throws(() => encodeJson({ x: 1n }, "out"), /BigInt/);
    assert.equal(encodeJson(undefined, "out"), "null");
  });
});

describe("function declarations", () => {
  it("builds the FunctionConfig", () => {
    const config = functionConfig({ id: "f", trigger: [
      "a/b", { event: "c/d", if: "event.data.x > 1" }, { cron: "0 9 * * MON", tz: "Europe/Paris" }],
    retries: 0, cancelOn: { event: "e/f", timeout: "1h" }, timeouts: { finish: "7d" } });
    assert.deepEqual(config.triggers, [
      { event: { name: "a/b", expression: "" } },
      { event: { name: "c/d", expression: "event.data.x > 1" } },
      { cron: { schedule: "0 9 * * MON", timezone: "Europe/Paris" } }]);
    assert.equal(config.retries, 0);
    assert.deepEqual(config.cancelOn, [{ event: "e/f", expression: "", timeout: { seconds: 3600, nanos: 0 } }]);
    assert.deepEqual(config.timeouts, { finish: { seconds: 604_800, nanos: 0 } });
    const failure = failureConfig(config, "app:f");
    assert.equal(failure.id, "f-failure");
    assert.deepEqual(failure.triggers, [{ event: { name: "stepline/function.failed",
      expression: 'event.data.function_id == "app:f"' } }]);
  });
  it("refuses bad options, naming the field", () => {
    assert.throws(() => functionConfig({ id: "a:b", trigger: "x" }), /no ':'/);
    assert.throws(() => functionConfig({ id: "f", trigger: "x", retries: -1 }), /retries/);
    assert.throws(() => functionConfig({ id: "f", trigger: { event: "x", iff: "y" } as never }),
      /trigger\[0\]: unknown key\(s\) iff/);
    assert.throws(() => functionConfig({ id: "f", trigger: "x", cancelOn: [{ event: "" }] }),
      /cancelOn\[0\]\.event/);
    assert.throws(() => functionConfig({ id: "f", trigger: "x", timeouts: { start: "x" } }),
      /timeouts\.start/);
  });
  it("sends flow control options as FunctionConfig fields 8-15", () => {
    const config = functionConfig({
      id: "f", trigger: "x",
      concurrency: [{ limit: 5, key: "event.data.tenant" }, { limit: 50, key: "'all'", scope: "env" }],
      throttle: { limit: 10, period: "1m", burst: 3 },
      rateLimit: { limit: 1, period: "1h", key: "event.data.user" },
      debounce: { period: "30s", key: "event.data.doc", timeout: "5m" },
      priority: { run: "event.data.vip ? 120 : 0" },
      idempotency: "event.data.order",
      singleton: { mode: "cancel", key: "event.data.user" },
    });
    assert.deepEqual(config.concurrency, [
      { limit: 5, key: "event.data.tenant", scope: "SCOPE_FN" },
      { limit: 50, key: "'all'", scope: "SCOPE_ENV" }]);
    assert.deepEqual(config.throttle, { limit: 10, period: { seconds: 60, nanos: 0 }, burst: 3, key: "" });
    assert.deepEqual(config.rateLimit,
      { limit: 1, period: { seconds: 3600, nanos: 0 }, key: "event.data.user" });
    assert.deepEqual(config.debounce, { period: { seconds: 30, nanos: 0 }, key: "event.data.doc",
      timeout: { seconds: 300, nanos: 0 } });
    assert.deepEqual(config.priority, { run: "event.data.vip ? 120 : 0" });
    assert.equal(config.idempotency, "event.data.order");
    assert.deepEqual(config.singleton, { mode: "MODE_CANCEL", key: "event.data.user" });
    assert.equal(config.batchEvents, undefined);
    const batched = functionConfig({ id: "b", trigger: "x", concurrency: 2, priority: undefined,
      batchEvents: { maxSize: 10, timeout: 2000 } });
    assert.deepEqual(batched.concurrency, [{ limit: 2, key: "", scope: "SCOPE_FN" }]);
    assert.deepEqual(batched.batchEvents, { maxSize: 10, timeout: { seconds: 2, nanos: 0 }, key: "" });
    assert.deepEqual(functionConfig({ id: "p", trigger: "x", priority: "event.data.p" }).priority,
      { run: "event.data.p" });
    assert.deepEqual(functionConfig({ id: "n", trigger: "x" }).concurrency, []);
  });
  it("refuses bad flow control options with the server's bounds, naming the option", () => {
    const bad = (options: object, pattern: RegExp): void => {
      assert.throws(() => functionConfig({ id: "f", trigger: "x", ...options }),
        (e: Error) => e instanceof InvalidUsageError && pattern.test(e.message));
    };
    bad({ concurrency: 0 }, /^function "f": concurrency\.limit: must be an integer between 1 and 100000/);
    bad({ concurrency: [1, 2, 3] }, /concurrency: at most 2 limits; got 3/);
    bad({ concurrency: [{ limit: 1, scope: "account" }] }, /concurrency\[0\]\.key: a key is required/);
    bad({ concurrency: [{ limit: 1, key: "k", scope: "app" }] }, /concurrency\[0\]\.scope/);
    bad({ throttle: { limit: 1, period: "500ms" } }, /throttle\.period: must be between 1s and 7d/);
    bad({ throttle: { limit: 1, period: "1s", burst: -1 } }, /throttle\.burst/);
    bad({ throttle: { limit: 1, period: "1s", extra: 1 } }, /throttle: unknown key\(s\) extra/);
    bad({ rateLimit: { limit: 1, period: "2d" } }, /rateLimit\.period: must be between 1s and 1d/);
    bad({ rateLimit: { limit: 0, period: "1s" } }, /rateLimit\.limit/);
    bad({ debounce: { period: "10s", timeout: "5s" } }, /debounce\.timeout: must be between 10s and 7d/);
    bad({ batchEvents: { maxSize: 1, timeout: "1s" } }, /batchEvents\.maxSize: must be an integer between 2/);
    bad({ batchEvents: { maxSize: 5, timeout: "11m" } }, /batchEvents\.timeout: must be between 1s and 10m/);
    bad({ batchEvents: { maxSize: 5, timeout: "1s" }, debounce: { period: "1s" } },
      /batchEvents cannot be combined with debounce/);
    bad({ batchEvents: { maxSize: 5, timeout: "1s" }, cancelOn: { event: "stop" } },
      /batchEvents cannot be combined with cancelOn/);
    bad({ singleton: { mode: "drop" } }, /singleton\.mode: expected "skip" or "cancel"/);
    bad({ idempotency: "" }, /idempotency: expected a CEL expression/);
    bad({ priority: { run: "x".repeat(1025) } }, /priority\.run: at most 1024 characters/);
  });
  it("refuses a bad app id and a function declared twice", () => {
    assert.throws(() => new Stepline({ appId: "bad app" }), /not a valid app id/);
    const app = new Stepline({ appId: "unit", url: "grpc://127.0.0.1:1/" });
    assert.equal(app.target, "127.0.0.1:1");
    const fn = app.createFunction({ id: "f", trigger: "x", onFailure: () => null }, () => 1);
    assert.equal(fn.fullName, "unit:f");
    assert.deepEqual([...app.functions.keys()], ["f", "f-failure"]);
    assert.throws(() => app.createFunction({ id: "f-failure", trigger: "x" }, () => 1),
      /already declared/);
    assert.throws(() => app.worker({ slots: 0 }), InvalidUsageError);
    assert.throws(() => new Stepline({ appId: "empty" }).worker(), /no functions to serve/);
  });
});
