// An unmodified Inngest app written with the official npm SDK (v4), served by node:http: the
// tests' scenarios (tests/integration/test_inngest_apps.py). INNGEST_DEV, or INNGEST_BASE_URL
// with keys, point it at Stepline as they would at Inngest.
// Run: NODE_PATH=examples/inngest/ts/node_modules PORT=3000 node tests/inngest_apps/ts_app.cjs
const http = require("node:http");
const { Inngest, NonRetriableError } = require("inngest");
const { serve } = require("inngest/node");

const inngest = new Inngest({ id: process.env.APP_ID || "tsapp" });

const threeSteps = inngest.createFunction(
  { id: "three-steps", triggers: [{ event: "test/three" }] },
  async ({ event, step }) => {
    const a = await step.run("one", () => 1);
    const b = await step.run("two", () => a + 1);
    const c = await step.run("three", () => b + 1);
    return { sum: a + b + c, n: event.data.n ?? null };
  },
);

const flaky = inngest.createFunction(
  { id: "flaky", retries: 2, triggers: [{ event: "test/flaky" }] },
  async ({ step, attempt }) =>
    step.run("shaky", () => {
      if (attempt === 0) throw new Error("first attempt fails");
      return `ok on attempt ${attempt}`;
    }),
);

const doomed = inngest.createFunction(
  {
    id: "doomed", retries: 3, triggers: [{ event: "test/doomed" }],
    onFailure: async ({ step }) => step.run("note", () => "failure handled"),
  },
  async ({ step }) => {
    await step.run("boom", () => { throw new NonRetriableError("no point retrying"); });
  },
);

const sleeper = inngest.createFunction(
  { id: "sleeper", triggers: [{ event: "test/sleep" }] },
  async ({ step }) => {
    await step.sleep("nap", "1s");
    return step.run("after", () => "woke");
  },
);

const waiter = inngest.createFunction(
  { id: "waiter", triggers: [{ event: "test/wait" }] },
  async ({ event, step }) => {
    const got = await step.waitForEvent("approval", {
      event: "test/approve", match: "data.id", timeout: `${event.data.timeout ?? 30}s`,
    });
    return got === null ? null : got.data;
  },
);

const invoker = inngest.createFunction(
  { id: "invoker", triggers: [{ event: "test/invoke" }] },
  async ({ step }) => step.invoke("child", { function: threeSteps, data: { n: 7 } }),
);

const fanOut = inngest.createFunction(
  { id: "fan-out", triggers: [{ event: "test/parallel" }] },
  async ({ step }) => Promise.all([step.run("left", () => "L"), step.run("right", () => "R")]),
);

const sender = inngest.createFunction(
  { id: "sender", triggers: [{ event: "test/send" }] },
  async ({ step }) => step.sendEvent("fire", { name: "test/three", data: { n: 42 } }),
);

const cancellable = inngest.createFunction(
  {
    id: "cancellable", triggers: [{ event: "test/cancellable" }],
    cancelOn: [{ event: "test/stop", match: "data.id" }],
  },
  async ({ step }) => {
    await step.sleep("long", "10m");
    return "not cancelled";
  },
);

const ticker = inngest.createFunction(
  {
    id: "ticker", triggers: [{ cron: process.env.TICKER_CRON || "*/5 * * * *" }],
    concurrency: { limit: 2 },
  },
  async () => "tick",
);

const functions = [threeSteps, flaky, doomed, sleeper, waiter, invoker, fanOut, sender,
  cancellable, ticker];
const server = http.createServer(serve({ client: inngest, functions }));
server.listen(Number(process.env.PORT || 3000), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
