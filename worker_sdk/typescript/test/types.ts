// Type tests: `tsc -p tsconfig.types.json` (in `npm test`, so in `make test`) must accept this
// file; each @ts-expect-error fails the build if the line below it stops being an error.
import { Stepline, type Event } from "../src/index.js";

const app = new Stepline({ appId: "types" });

app.createFunction<{ userId: string; count: number }>(
  { id: "typed", trigger: "user/signup" },
  async ({ event, step }) => {
    const id: string = event.data.userId;
    // @ts-expect-error: event data is typed; there is no such field
    void event.data.email;
    // @ts-expect-error: userId is a string
    const n: number = event.data.userId;

    const user = await step.run("fetch", () => ({ id, score: 3, tags: ["a"] }));
    const score: number = user.score;
    const tag: string | undefined = user.tags[0];
    // @ts-expect-error: step.run returns its callback's result type
    const wrong: string = user.score;

    const later = await step.run("async", async () => 42);
    const m: number = later;
    // @ts-expect-error: awaited async results are numbers here, not promises
    void later.then;

    // A Date in a step result comes back as its JSON text on replay: typed as a string.
    const when = await step.run("date", () => new Date());
    const text: string = when;

    const nothing = await step.run("void", () => undefined);
    const isNull: null = nothing;

    const approval = await step.waitForEvent<{ by: string }>("wait", {
      event: "approved", timeout: "1d" });
    const by: string | undefined = approval?.data.by;
    // @ts-expect-error: the wait may time out: the result can be null
    void approval.data;

    // @ts-expect-error: a duration is milliseconds or a string, not a Date
    await step.sleep("nap", new Date());
    // @ts-expect-error: waitForEvent needs a timeout
    await step.waitForEvent("w", { event: "x" });
    // @ts-expect-error: sendEvent needs named events
    await step.sendEvent("s", { data: {} });

    const sent = await step.sendEvent("s", { name: "x/y", data: { a: 1 } });
    const ids: string[] = sent.ids;
    return { id, n, score, tag, wrong, m, text, isNull, by, ids };
  });

// @ts-expect-error: a trigger object is { event, if } or { cron, tz }
app.createFunction({ id: "bad", trigger: { name: "x" } }, () => null);
// @ts-expect-error: retries is a number
app.createFunction({ id: "bad2", trigger: "x", retries: "3" }, () => null);

const typedEvent: Event<{ a: number }> = { name: "n", data: { a: 1 }, id: "", ts: null, user: null };
// @ts-expect-error: data is typed
typedEvent.data.a = "one";

// Runs from app code: invoke given a declared function resolves to its result (as JSON).
const scorer = app.createFunction({ id: "scorer", trigger: "score" },
  async () => ({ score: 1, at: new Date() }));
async function fromAppCode(): Promise<void> {
  const result = await app.invoke(scorer, { x: 1 }, { timeout: "30s" });
  const score: number = result.score;
  const at: string = result.at;
  // @ts-expect-error: the output has no such field
  void result.rank;
  // @ts-expect-error: a timeout is milliseconds or a duration string
  await app.invoke("scorer", {}, { timeout: new Date() });
  // @ts-expect-error: data is a JSON object
  await app.start("scorer", "text");
  const named = await app.invoke<{ total: number }>("other-app:total", {});
  const total: number = named.total;
  const run = await app.getRun(await app.start("scorer"));
  const status: "queued" | "running" | "sleeping" | "waiting" | "completed" | "failed"
    | "cancelled" | "unknown" = run.status;
  // @ts-expect-error: status is one of the run statuses
  const wrongStatus: "done" = run.status;
  void [score, at, total, status, wrongStatus];
}
void fromAppCode;

// stepline/testing: run() takes the function's event data type and gives its output type.
import { run } from "../src/testing.js";
import type { Context } from "../src/index.js";

const greet = app.createFunction({ id: "greet", trigger: "t/greet" },
  async ({ event, step }: Context<{ name: string }>) => {
    const text = await step.run("greet", () => `hi ${event.data.name}`);
    return { text, at: new Date() };
  });
void (async () => {
  const result = await run(greet, { event: { data: { name: "Ada" } }, steps: { greet: "hey" } });
  const text: string | undefined = result.output?.text;
  const at: string | undefined = result.output?.at; // a Date comes back as its JSON text
  // @ts-expect-error: the output is typed; there is no such field
  void result.output?.missing;
  // @ts-expect-error: the event data is typed
  await run(greet, { event: { data: { name: 3 } } });
  // A batch: every event's data is typed too.
  await run(greet, { events: [{ data: { name: "Ada" } }, { data: { name: "Bo" } }] });
  // @ts-expect-error: the batch's event data is typed
  await run(greet, { events: [{ data: { name: 3 } }] });
  void [text, at];
})();

// ctx.events: the batch, typed like ctx.event.
app.createFunction({ id: "batched", trigger: "t/batch" },
  async ({ events }: Context<{ n: number }>) => events.reduce((sum, e) => sum + e.data.n, 0));
// Flow control options are typed: scopes and modes are the documented names.
app.createFunction({
  id: "limited", trigger: "e", concurrency: [{ limit: 5, key: "event.data.tenant", scope: "env" }],
  throttle: { limit: 10, period: "1m", burst: 2 }, rateLimit: { limit: 1, period: 60_000 },
  debounce: { period: "30s", timeout: "5m" }, priority: { run: "event.data.p" },
  idempotency: "event.data.id", singleton: { mode: "skip" },
}, () => null);
app.createFunction({ id: "batching", trigger: "e", concurrency: 3,
  batchEvents: { maxSize: 10, timeout: "5s" } }, () => null);
// @ts-expect-error: no such scope
app.createFunction({ id: "s", trigger: "e", concurrency: { limit: 1, scope: "app" } }, () => null);
// @ts-expect-error: singleton modes are "skip" and "cancel"
app.createFunction({ id: "m", trigger: "e", singleton: { mode: "queue" } }, () => null);
// @ts-expect-error: a throttle needs a period
app.createFunction({ id: "t", trigger: "e", throttle: { limit: 1 } }, () => null);
