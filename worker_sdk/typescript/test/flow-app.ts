// The TypeScript worker of tests/e2e/test_flow_deferred.py, run as a real process against
// STEPLINE_URL: a batched function whose output is what it got as ctx.event and ctx.events.
import { Stepline } from "../src/index.js";

const app = new Stepline({ appId: "ts-flow" });

const batched = app.createFunction<{ i: number }>({ id: "batched", trigger: "ts/batch" },
  async ({ event, events, step }) => {
    const seen = await step.run("seen", () => events.map((e) => e.data.i));
    return { event: event.data.i, events: seen };
  });
// The registration carries the server's FunctionConfig as it is (see src/proto.ts); batching
// is set on it directly.
Object.assign(batched.config, { batchEvents: { maxSize: 5, timeout: { seconds: "1", nanos: 0 } } });

await app.worker().run();
