// Stepline's TypeScript conformance app: the functions of conformance/README.md, written with
// this SDK, as a stream worker. `node dist-test/test/conformance-app.js` (built by `npm run
// build:test`), with STEPLINE_URL (the server) and CONFORMANCE_LOG (the file side effects are
// appended to, one JSON object a line) in its environment.
import { appendFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type Context, NonRetriableError, RetryAfterError, Stepline, StepError,
} from "../src/index.js";

type Data = { key?: string; [field: string]: unknown };

const app = new Stepline({ appId: "conformance" });

function note(ctx: Context<Data>, step: string, what = "ran"): void {
  const record = { fn: ctx.functionId, key: ctx.event.data.key ?? null, step,
    attempt: ctx.attempt, what, at: Date.now() / 1000 };
  appendFileSync(process.env.CONFORMANCE_LOG ?? "conformance.log", JSON.stringify(record) + "\n");
}

app.createFunction<Data>({ id: "sequential", trigger: "conformance/sequential" }, async (ctx) => {
  const a = await ctx.step.run("a", () => { note(ctx, "a"); return Number(ctx.event.data.n) + 1; });
  const b = await ctx.step.run("b", () => { note(ctx, "b"); return a * 2; });
  const c = await ctx.step.run("c", () => { note(ctx, "c"); return `${b}!`; });
  return { a, b, c };
});

app.createFunction<Data>({ id: "memo", trigger: "conformance/memo" }, async (ctx) => {
  const first = await ctx.step.run("first", () => { note(ctx, "first"); return randomUUID(); });
  await ctx.step.sleep("pause", "100ms");
  const second = await ctx.step.run("second", () => { note(ctx, "second"); return first; });
  return { first, second };
});

app.createFunction<Data>({ id: "retry", trigger: "conformance/retry", retries: 3 },
  async (ctx) => ctx.step.run("flaky", () => {
    note(ctx, "flaky");
    if (ctx.attempt < 2) throw new Error(`attempt ${ctx.attempt} failed`);
    return ctx.attempt;
  }));

app.createFunction<Data>({ id: "non-retriable", trigger: "conformance/non-retriable", retries: 5 },
  async (ctx) => {
    await ctx.step.run("doomed", () => {
      note(ctx, "doomed");
      throw new NonRetriableError("no such thing");
    });
  });

app.createFunction<Data>({ id: "retry-after", trigger: "conformance/retry-after", retries: 3 },
  async (ctx) => ctx.step.run("later", () => {
    note(ctx, "later");
    if (ctx.attempt === 0) throw new RetryAfterError("not yet", 500);
    return "done";
  }));

app.createFunction<Data>({ id: "sleep", trigger: "conformance/sleep" }, async (ctx) => {
  await ctx.step.run("before", () => { note(ctx, "before"); });
  await ctx.step.sleep("nap", "1s");
  await ctx.step.run("after", () => { note(ctx, "after"); });
  return "rested";
});

app.createFunction<Data>({ id: "wait", trigger: "conformance/wait" }, async (ctx) => {
  const approval = await ctx.step.waitForEvent<{ key: string; by: string }>("approval", {
    event: "conformance/approved", timeout: String(ctx.event.data.timeout),
    if: "async.data.key == event.data.key" });
  return approval === null ? { approved: false } : { approved: true, by: approval.data.by };
});

app.createFunction<Data>({ id: "child", trigger: "conformance/child" },
  async (ctx) => ctx.step.run("double", () => ({ doubled: Number(ctx.event.data.x) * 2 })));

app.createFunction<Data>({ id: "invoke", trigger: "conformance/invoke" }, async (ctx) => {
  const result = await ctx.step.invoke("call", {
    function: "child", data: { x: ctx.event.data.x }, timeout: "30s" });
  return { result };
});

app.createFunction<Data>({ id: "send", trigger: "conformance/send", retries: 2 }, async (ctx) => {
  const sent = await ctx.step.sendEvent("announce",
    { name: "conformance/announced", data: { key: ctx.event.data.key } });
  await ctx.step.run("after-send", () => {
    note(ctx, "after-send");
    if (ctx.attempt === 0) throw new Error("fail once after sending");
    return "ok";
  });
  return { ids: sent.ids };
});

app.createFunction<Data>({ id: "announced", trigger: "conformance/announced" }, async (ctx) => {
  note(ctx, "announced", "received");
  return String(ctx.event.data.key);
});

app.createFunction<Data>({ id: "parallel", trigger: "conformance/parallel" }, async (ctx) => {
  const first = await ctx.step.run("first", () => 1);
  const part = (name: string, value: number): number => {
    note(ctx, name);
    if (name === "bad") throw new NonRetriableError("bad part");
    return first + value;
  };
  const settled = await Promise.allSettled([
    ctx.step.run("ok-a", () => part("ok-a", 10)),
    ctx.step.run("ok-b", () => part("ok-b", 20)),
    ctx.step.run("bad", () => part("bad", 30)),
  ]);
  const results = settled.map((r) => {
    if (r.status === "fulfilled") return r.value;
    if (r.reason instanceof StepError) return r.reason.errorName;
    throw r.reason;
  });
  return { results };
});

app.createFunction<Data>({ id: "cancel", trigger: "conformance/cancel",
  cancelOn: [{ event: "conformance/stop", if: "async.data.key == event.data.key" }] },
async (ctx) => {
  await ctx.step.run("started", () => { note(ctx, "started"); });
  await ctx.step.run("long", async () => {
    note(ctx, "long", "start");
    await sleep(Number(ctx.event.data.seconds) * 1000);
    note(ctx, "long", "end");
    return "long done";
  });
  await ctx.step.run("after", () => { note(ctx, "after"); });
  return "not cancelled";
});

app.createFunction<Data>({ id: "doomed", trigger: "conformance/doomed", retries: 0,
  onFailure: async ({ event }) => ({
    failed: event.data.function_id, error: event.data.error.message }) },
async (ctx) => {
  await ctx.step.run("explode", () => { note(ctx, "explode"); throw new Error("boom"); });
});

app.createFunction<Data>({ id: "slow", trigger: "conformance/slow", retries: 3 },
  async (ctx) => ctx.step.run("work", async () => {
    note(ctx, "work", "start");
    await sleep(Number(ctx.event.data.seconds) * 1000);
    note(ctx, "work", "end");
    return "worked";
  }));

app.createFunction<Data>({ id: "drift", trigger: "conformance/drift", retries: 2 },
  async (ctx) => {
    if (ctx.attempt === 0) await ctx.step.run("a", () => 1);
    else await ctx.step.run("b", () => 2);
    await ctx.step.run("flaky", () => { throw new Error("retry me"); });
  });

await app.worker({ slots: 8 }).run();
