// The TypeScript worker the pytest e2e tests (tests/e2e/test_typescript.py) run as a real
// process: `node dist-test/test/e2e-app.js`, against STEPLINE_URL. E2E_LOG, when set, is a file
// each step execution appends a line to ("<function> <step> <attempt>"), so tests can tell what
// ran and how often.
import { appendFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { NonRetriableError, RetryAfterError, Stepline, StepError } from "../src/index.js";

const app = new Stepline({ appId: "ts-e2e" });
const logFile = process.env.E2E_LOG;

function note(fn: string, step: string, attempt: number): void {
  if (logFile) appendFileSync(logFile, `${fn} ${step} ${attempt}\n`);
}

export const threeSteps = app.createFunction<{ userId: string }>(
  { id: "three-steps", trigger: "ts/three" },
  async ({ event, step }) => {
    const user = await step.run("fetch-user", () => ({ id: event.data.userId, plan: "pro" }));
    const message = await step.run("send-email", () => `msg-${user.id}`);
    await step.run("mark-sent", () => { note("three-steps", "mark-sent", 0); });
    return { user, message };
  });

const retriedAfter = new Set<string>();

app.createFunction({ id: "retry", trigger: "ts/retry", retries: 3 },
  async ({ step, attempt, runId }) => {
  const value = await step.run("flaky", () => {
    note("retry", "flaky", attempt);
    if (attempt < 2) throw new Error(`flaky attempt ${attempt}`);
    return attempt;
  });
  const later = await step.run("after", () => {
    note("retry", "after", attempt);
    if (!retriedAfter.has(runId)) {
      retriedAfter.add(runId);
      throw new RetryAfterError("not yet", 100);
    }
    return "after";
  });
  return { value, later };
});

app.createFunction({ id: "non-retriable", trigger: "ts/non-retriable", retries: 5 },
  async ({ step, attempt }) => {
    try {
      await step.run("doomed", () => {
        note("non-retriable", "doomed", attempt);
        throw new NonRetriableError("no such user");
      });
    } catch (error) {
      if (!(error instanceof StepError)) throw error;
      // Caught: the run goes on, and fails for good with an error of its own.
      await step.run("cleanup", () => error.errorName);
      throw new NonRetriableError(`gave up: ${error.errorMessage}`);
    }
  });

app.createFunction({ id: "sleeper", trigger: "ts/sleep" }, async ({ step }) => {
  const before = await step.run("before", () => Date.now());
  await step.sleep("nap", "1s");
  await step.sleepUntil("nap-until", new Date(before + 1200));
  const after = await step.run("after", () => Date.now());
  return { slept: after - before };
});

app.createFunction<{ key: string; timeout: string }>(
  { id: "waiter", trigger: "ts/wait" },
  async ({ event, step }) => {
    const approval = await step.waitForEvent<{ key: string; by: string }>("approval", {
      event: "ts/approved", timeout: event.data.timeout,
      if: "async.data.key == event.data.key" });
    return approval === null ? { approved: false } : { approved: true, by: approval.data.by };
  });

export const double = app.createFunction<{ x: number }>(
  { id: "ts-double", trigger: "ts/double" },
  async ({ event, step }) => step.run("double", () => ({ doubled: event.data.x * 2, by: "ts" })));

app.createFunction<{ x: number; target?: string }>({ id: "invoker", trigger: "ts/invoke" },
  async ({ event, step }) => {
    const result = await step.invoke<{ doubled: number; by: string }>("call", {
      function: event.data.target ?? double, data: { x: event.data.x }, timeout: "30s" });
    return { result };
  });

app.createFunction<{ key: string }>({ id: "sender", trigger: "ts/send" },
  async ({ event, step }) => {
    const sent = await step.sendEvent("announce", [
      { name: "ts/announced", data: { key: event.data.key } },
      { name: "ts/announced", data: { key: `${event.data.key}-b` }, id: `fixed-${event.data.key}` },
    ]);
    return sent;
  });

app.createFunction<{ key: string }>({ id: "announced", trigger: "ts/announced" },
  async ({ event }) => ({ got: event.data.key }));

app.createFunction({ id: "parallel", trigger: "ts/parallel" }, async ({ step }) => {
  const first = await step.run("first", () => 1);
  const [a, b, c] = await Promise.all([
    step.run("part", () => { note("parallel", "part", 0); return 10; }),
    step.run("part", () => { note("parallel", "part:1", 0); return 20; }),
    step.run("other", () => { note("parallel", "other", 0); return 30; }),
  ]);
  const last = await step.run("sum", () => first + a + b + c);
  return { last };
});

app.createFunction<{ key: string }>({ id: "cancellable", trigger: "ts/cancellable",
  cancelOn: [{ event: "ts/cancel", if: "async.data.key == event.data.key" }] },
async ({ step }) => {
  await step.run("start", () => "started");
  await step.sleep("long-nap", "1h");
  return "never";
});

// The code "changes" between attempts: the retry reaches a new step before the recorded one.
app.createFunction({ id: "drifting", trigger: "ts/drift", retries: 2 },
  async ({ step, attempt }) => {
    if (attempt === 0) await step.run("a", () => 1);
    else await step.run("b", () => 2);
    await step.run("flaky", () => { throw new Error("retry me"); });
  });

app.createFunction({ id: "timed", trigger: "ts/timed", timeouts: { finish: "1s" } },
  async ({ step }) => {
    await step.sleep("too-long", "1h");
    return "never";
  });

app.createFunction({ id: "failing", trigger: "ts/fail", retries: 0,
  onFailure: async ({ event, step }) => step.run("alert", () => ({
    failed: event.data.function_id, error: event.data.error.message })) },
async ({ step }) => {
  await step.run("explode", () => { throw new Error("boom"); });
});

// Flow control options as the TypeScript SDK sends them (registered, never triggered here).
app.createFunction({ id: "limited", trigger: "ts/limited",
  concurrency: [{ limit: 2, key: "event.data.k" }, { limit: 9, key: "'ts'", scope: "account" }],
  throttle: { limit: 5, period: "1m", burst: 0 }, rateLimit: { limit: 3, period: 60_000 },
  debounce: { period: "2s", key: "event.data.k", timeout: "1m" }, priority: "event.data.p",
  idempotency: "event.data.id", singleton: { mode: "skip" } }, () => "limited");

app.createFunction<{ ms: number }>({ id: "slow", trigger: "ts/slow" },
  async ({ event, step, attempt }) => {
    await step.run("work", async () => {
      note("slow", "work", attempt);
      await sleep(event.data.ms);
      return "worked";
    });
    return "done";
  });

app.createFunction({ id: "cron", trigger: { cron: "0 9 * * MON", tz: "Europe/Paris" } },
  async () => "weekly");

await app.worker({ slots: Number(process.env.E2E_SLOTS ?? 4) }).run();
