// stepline/testing: functions run in-process through the SDK's own executor, with stubbed steps,
// a fake clock, stubbed waits and invokes, and retries that do not wait (node:test).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { NonRetriableError, RetryAfterError, StepError, Stepline, type Context }
  from "../src/index.js";
import { run, TestingError } from "../src/testing.js";

const app = new Stepline({ appId: "testing-helpers" });
const START = new Date("2030-01-07T09:00:00Z");

function flaky(failures: number, error: Error = new Error("flaky")) {
  const state = { calls: 0, fn: (): string => {
    state.calls += 1;
    if (state.calls <= failures) throw error;
    return "ok";
  } };
  return state;
}

const stepsFn = app.createFunction(
  { id: "steps", trigger: "t/steps", retries: 2 },
  async ({ event, step, runId }: Context<{ n: number }>) => {
    const a = await step.run("double", () => 2 * event.data.n);
    const b = await step.run("double", () => 2 * a); // the second use of the name: "double:1"
    const c = await step.run("label", () => `n=${b}`);
    return { a, b, c, runId };
  });

describe("stepline/testing", () => {
  it("runs real steps in order, with their outputs", async () => {
    const result = await run(stepsFn, { event: { data: { n: 3 } }, runId: "run_7" });
    assert.equal(result.error, null);
    assert.deepEqual(result.output, { a: 6, b: 12, c: "n=12", runId: "run_7" });
    assert.deepEqual(result.steps.map((s) => [s.id, s.name, s.kind, s.output]), [
      ["double", "double", "run", 6], ["double:1", "double", "run", 12],
      ["label", "label", "run", "n=12"]]);
    assert.equal(result.step("double:1").output, 12);
    assert.throws(() => result.step("missing"), /no step "missing"/);
  });

  it("answers stubbed steps, by id before name", async () => {
    const result = await run(stepsFn, { event: { data: { n: 3 } },
      steps: { "double": 100, "double:1": 7 } });
    assert.deepEqual([result.output?.a, result.output?.b, result.output?.c], [100, 7, "n=7"]);
  });

  it("sends the first trigger's event by default, or the one given", async () => {
    const echo = app.createFunction({ id: "echo", trigger: ["t/first", "t/second"] },
      ({ event }) => [event.name, event.data, event.id]);
    assert.deepEqual((await run(echo)).output, ["t/first", {}, "evt_test"]);
    assert.deepEqual((await run(echo, { event: { name: "t/second", data: { k: 1 }, id: "e9" } }))
      .output, ["t/second", { k: 1 }, "e9"]);
  });

  it("retries a failing step without waiting", async () => {
    const api = flaky(2);
    const fn = app.createFunction({ id: "flaky", trigger: "t/x", retries: 2 },
      ({ step }) => step.run("call-api", api.fn));
    const result = await run(fn);
    assert.equal(result.output, "ok");
    assert.equal(api.calls, 3);
    assert.equal(result.step("call-api").attempts, 3);
    assert.equal(result.dispatches, 3);
  });

  it("throws StepError where a step that failed every attempt was called", async () => {
    const fn = app.createFunction({ id: "exhausted", trigger: "t/x", retries: 2 },
      async ({ step }) => {
        try {
          await step.run("charge", () => "never called");
          return "charged";
        } catch (error) {
          const reason = (error as StepError).errorMessage;
          return step.run("apologise", () => `sorry: ${reason}`);
        }
      });
    const result = await run(fn, { steps: { charge: new Error("card network down") } });
    assert.equal(result.output, "sorry: card network down");
    assert.equal(result.step("charge").attempts, 3);
    assert.equal(result.step("charge").error?.message, "card network down");
    assert.deepEqual(result.stepNames, ["charge", "apologise"]);
  });

  it("makes an uncaught step failure the run's error", async () => {
    const result = await run(stepsFn, { event: { data: { n: 1 } },
      steps: { "double:1": new TypeError("bad") } });
    assert.equal(result.failed, true);
    assert.equal(result.output, null);
    assert.equal(result.error?.name, "StepError");
    assert.match(result.error?.message ?? "", /step "double:1" failed: TypeError: bad/);
  });

  it("does not retry non-retriable errors", async () => {
    const api = flaky(5, new NonRetriableError("no such user"));
    const fn = app.createFunction({ id: "non-retriable", trigger: "t/x", retries: 4 },
      ({ step }) => step.run("fetch", api.fn));
    const result = await run(fn);
    assert.equal(api.calls, 1);
    assert.match(result.error?.message ?? "", /no such user/);
  });

  it("moves the fake clock by a RetryAfterError's delay", async () => {
    const api = flaky(1, new RetryAfterError("rate limited", "5m"));
    const fn = app.createFunction({ id: "retry-after", trigger: "t/x", retries: 1 },
      ({ step }) => step.run("call", api.fn));
    const result = await run(fn, { now: START });
    assert.equal(result.output, "ok");
    assert.equal(result.now.getTime(), START.getTime() + 300_000);
  });

  it("retries the body when it fails outside steps", async () => {
    const fn = app.createFunction({ id: "body-retry", trigger: "t/x", retries: 1 },
      async ({ step, attempt }) => {
        const one = await step.run("one", () => 1);
        if (attempt === 0) throw new Error("transient");
        return one + attempt;
      });
    const result = await run(fn);
    assert.equal(result.output, 2);
    assert.deepEqual(result.stepNames, ["one"]);
  });

  it("ends sleeps at once on the fake clock", async () => {
    const fn = app.createFunction({ id: "sleeper", trigger: "t/sleep" }, async ({ step }) => {
      await step.sleep("cool-off", "1h30m");
      await step.sleepUntil("until-noon", "2030-01-07T12:00:00Z");
      await step.sleepUntil("in-the-past", "2020-01-01T00:00:00Z");
      return "awake";
    });
    const result = await run(fn, { now: START });
    assert.equal(result.output, "awake");
    const [nap, noon, past] = result.sleeps;
    assert.equal(nap?.durationMs, 5_400_000);
    assert.equal(nap?.wokeAt.toISOString(), "2030-01-07T10:30:00.000Z");
    assert.equal(noon?.wokeAt.toISOString(), "2030-01-07T12:00:00.000Z");
    assert.equal(past?.wokeAt.toISOString(), "2030-01-07T12:00:00.000Z");
    assert.deepEqual(result.steps.map((s) => s.kind), ["sleep", "sleep", "sleep"]);
  });

  const waiter = app.createFunction({ id: "waiter", trigger: "t/wait" }, async ({ step }) => {
    const got = await step.waitForEvent("upgrade", { event: "billing/upgraded", timeout: "2d",
      if: "async.data.userId == event.data.userId" });
    return got === null ? null : [got.name, got.data, got.id];
  });

  it("gives a wait its stubbed event", async () => {
    const result = await run(waiter, { waits: { upgrade: { data: { plan: "pro" } } }, now: START });
    assert.deepEqual(result.output, ["billing/upgraded", { plan: "pro" }, "evt_upgrade"]);
    const wait = result.waits[0];
    assert.deepEqual([wait?.event, wait?.if, wait?.timeoutMs],
      ["billing/upgraded", "async.data.userId == event.data.userId", 172_800_000]);
    assert.equal(wait?.result?.ts?.getTime(), START.getTime());
    assert.equal(result.now.getTime(), START.getTime());
  });

  it("times a wait out on the fake clock without an event", async () => {
    const cases: Record<string, null>[] = [{}, { upgrade: null }];
    for (const waits of cases) {
      const result = await run(waiter, { waits, now: START });
      assert.equal(result.output, null);
      assert.equal(result.waits[0]?.result, null);
      assert.equal(result.now.getTime(), START.getTime() + 172_800_000);
    }
  });

  it("rejects a bad wait stub with a TestingError", async () => {
    await assert.rejects(run(waiter, { waits: { upgrade: { data: [1] as never } } }),
      (e: Error) => e instanceof TestingError && e.message.startsWith('waits["upgrade"]'));
  });

  const invoker = app.createFunction({ id: "invoker", trigger: "t/invoke" }, async ({ step }) => {
    try {
      return await step.invoke("score", { function: "scoring-app:score", data: { u: 1 } });
    } catch (error) {
      return `failed: ${(error as StepError).errorName}: ${(error as StepError).errorMessage}`;
    }
  });

  it("answers invokes with their stub, or fails them", async () => {
    const result = await run(invoker, { invokes: { score: { score: 9 } } });
    assert.deepEqual(result.output, { score: 9 });
    assert.deepEqual(result.invokes.map((i) => [i.functionId, i.data, i.output]),
      [["scoring-app:score", { u: 1 }, { score: 9 }]]);
    const failed = await run(invoker, { invokes: { score: new RangeError("too slow") } });
    assert.equal(failed.output, "failed: RangeError: too slow");
  });

  it("rejects an invoke without a stub with a TestingError", async () => {
    await assert.rejects(run(invoker), (e: Error) => e instanceof TestingError &&
      /invokes function "scoring-app:score".*invokes:/.test(e.message));
  });

  it("records sent events with their ids", async () => {
    const fn = app.createFunction({ id: "sender", trigger: "t/send" }, async ({ step }) => {
      const one = await step.sendEvent("notify", { name: "a/one", data: { n: 1 } });
      const two = await step.sendEvent("fan-out", [{ name: "a/two", data: { n: 2 }, id: "mine" },
        { name: "a/three" }]);
      return [one, two];
    });
    const result = await run(fn, { runId: "run_s" });
    assert.deepEqual(result.sentEvents.map((e) => [e.name, e.data]),
      [["a/one", { n: 1 }], ["a/two", { n: 2 }], ["a/three", {}]]);
    assert.deepEqual(result.output, [{ ids: [result.sentEvents[0]?.id] },
      { ids: ["mine", result.sentEvents[2]?.id] }]);
    const other = await run(fn, { runId: "run_t" });
    assert.notEqual(other.sentEvents[0]?.id, result.sentEvents[0]?.id);
  });

  it("plans parallel steps and runs each once", async () => {
    const calls: string[] = [];
    const fn = app.createFunction({ id: "parallel", trigger: "t/p", retries: 1 },
      ({ step }) => Promise.all(["a", "b", "c"].map((n) => step.run(n, () => {
        calls.push(n);
        return n.toUpperCase();
      }))));
    const failed = await run(fn, { steps: { b: new Error("b down") } });
    assert.match(failed.error?.message ?? "", /step "b" failed/);
    assert.deepEqual(calls.sort(), ["a", "c"]);
    assert.equal(failed.step("b").attempts, 2);
    calls.length = 0;
    const ok = await run(fn);
    assert.deepEqual(ok.output, ["A", "B", "C"]);
    assert.deepEqual(calls.sort(), ["a", "b", "c"]);
  });

  it("fails code that changes between dispatches with NonDeterminismError", async () => {
    let dispatches = 0;
    const fn = app.createFunction({ id: "changing", trigger: "t/c" }, async ({ step }) => {
      dispatches += 1;
      await step.run(dispatches === 1 ? "a" : "b", () => 1);
      await step.sleep("nap", 1);
      return "done";
    });
    const result = await run(fn);
    assert.equal(result.error?.name, "NonDeterminismError");
  });

  it("gives up on a run that never ends", async () => {
    const fn = app.createFunction({ id: "forever", trigger: "t/f" }, async ({ step }) => {
      for (let n = 0; ; n += 1) await step.sleep(`nap-${n}`, 1);
    });
    await assert.rejects(run(fn), /did not end within 1000 dispatches/);
  });
});
