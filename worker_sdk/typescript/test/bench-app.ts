// The TypeScript worker of bench/typescript.py: the same 3-step function as bench/_worker_app.py
// (three trivial steps), as app "bench-ts". `node dist-test/test/bench-app.js`, with
// STEPLINE_URL and BENCH_SLOTS.
import { Stepline } from "../src/index.js";

const app = new Stepline({ appId: "bench-ts" });

app.createFunction<{ i?: number }>({ id: "bench-throughput", trigger: "bench/ts-throughput",
  retries: 0 }, async ({ step }) => {
  const a = await step.run("a", () => 1);
  const b = await step.run("b", () => a + 1);
  const c = await step.run("c", () => b + 1);
  return { c };
});

await app.worker({ slots: Number(process.env.BENCH_SLOTS ?? 10) }).run();
