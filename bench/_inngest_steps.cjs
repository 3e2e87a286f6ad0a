// bench/inngest_checkpoint.py's app: the npm SDK v4 on node:http with one function of N
// `step.run`s (N from the event), and a request counter (GET /count: requests and bytes the
// server sent and the SDK answered, and the milliseconds the SDK spent on them, since the last
// GET /count).
const http = require("node:http");
const { Inngest } = require("inngest");
const { serve } = require("inngest/node");

const inngest = new Inngest({ id: "bench-steps" });
const nSteps = inngest.createFunction(
  { id: "n-steps", retries: 0, triggers: [{ event: "bench/n-steps" }] },
  async ({ event, step }) => {
    let total = 0;
    for (let i = 0; i < event.data.n; i++) {
      total += await step.run(`s${i}`, () => i);
    }
    return total;
  },
);

const handler = serve({ client: inngest, functions: [nSteps] });
let counts = { requests: 0, request_bytes: 0, answer_bytes: 0, app_ms: 0 };
const server = http.createServer((req, res) => {
  if (req.url === "/count") {
    res.end(JSON.stringify(counts));
    counts = { requests: 0, request_bytes: 0, answer_bytes: 0, app_ms: 0 };
    return;
  }
  counts.requests += 1;
  const t0 = process.hrtime.bigint();
  res.on("finish", () => { counts.app_ms += Number(process.hrtime.bigint() - t0) / 1e6; });
  counts.request_bytes += Number(req.headers["content-length"] || 0);
  const write = res.write.bind(res);
  const end = res.end.bind(res);
  res.write = (chunk, ...rest) => { if (chunk) counts.answer_bytes += Buffer.byteLength(chunk); return write(chunk, ...rest); };
  res.end = (chunk, ...rest) => { if (chunk && typeof chunk !== "function") counts.answer_bytes += Buffer.byteLength(chunk); return end(chunk, ...rest); };
  handler(req, res);
});
server.listen(Number(process.env.PORT || 3000), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
