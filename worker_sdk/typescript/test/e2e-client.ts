// Runs from app code in TypeScript, for tests/e2e/test_typescript_runs.py: against STEPLINE_URL
// (the TypeScript worker of e2e-app.ts and the Python worker of tests/e2e/apps/polyglot_app.py
// connected), it invokes, awaits, gets and cancels runs, then prints one JSON report on stdout.
import {
  ClientError, InvalidUsageError, RunFailedError, RunTimeoutError, Stepline,
} from "../src/index.js";

const client = new Stepline({ appId: "ts-e2e" });
// The same declaration as e2e-app.ts's (which serves it): a typed handle to invoke it by.
const double = client.createFunction({ id: "ts-double", trigger: "ts/double" },
  async ({ event }) => ({ doubled: Number(event.data.x) * 2, by: "ts" }));

async function refusal(attempt: () => Promise<unknown>): Promise<Record<string, unknown>> {
  try {
    return { resolved: await attempt() };
  } catch (error) {
    if (error instanceof RunFailedError) {
      return { type: "RunFailedError", runId: error.runId, status: error.status,
        errorName: error.error.name, errorMessage: error.error.message };
    }
    if (error instanceof RunTimeoutError) {
      return { type: "RunTimeoutError", runId: error.runId, message: error.message };
    }
    if (error instanceof ClientError) {
      return { type: "ClientError", code: error.code, details: error.details };
    }
    if (error instanceof InvalidUsageError) return { type: "InvalidUsageError", message: error.message };
    throw error;
  }
}

async function main(): Promise<Record<string, unknown>> {
  const byId = await client.invoke<{ doubled: number; by: string }>("ts-double", { x: 4 },
    { timeout: "30s" });
  const byFunction: { doubled: number; by: string } = await client.invoke(double, { x: 5 },
    { timeout: 30_000 });
  const crossLanguage = await client.invoke("py-e2e:py-double", { x: 6 }, { timeout: "30s" });
  const startedId = await client.start("ts-double", { x: 7 }, { id: "ts-client-once" });
  const again = await client.start("ts-double", { x: 70 }, { id: "ts-client-once" });
  const waited = await client.waitRun(startedId, { timeout: "30s" });
  const failed = await refusal(() => client.invoke("failing", {}, { timeout: "30s" }));
  const timedOut = await refusal(() => client.invoke("cancellable", { key: "k" }, { timeout: 200 }));
  const heldId = String(timedOut.runId);
  const held = await client.getRun(heldId);
  const cancelled = await client.cancelRun(heldId, "not needed");
  const afterCancel = await client.waitRun(heldId, { timeout: 0 });
  const cancelAgain = await refusal(() => client.cancelRun(heldId));
  const unknown = await refusal(() => client.invoke("no-such-fn", {}, { timeout: "5s" }));
  const badData = await refusal(() => client.start("ts-double", [1] as never));
  const badId = await refusal(() => client.start("bad id!", {}));
  return {
    byId, byFunction, crossLanguage, startedId, again,
    waited: { status: waited.status, output: waited.output, ended: waited.ended,
      functionId: waited.functionId, endedAt: waited.endedAt instanceof Date },
    failed, timedOut,
    held: { status: held.status, ended: held.ended },
    cancelled: { status: cancelled.status, error: cancelled.error },
    afterCancel: { status: afterCancel.status, error: afterCancel.error?.message },
    cancelAgain, unknown, badData, badId,
  };
}

main().then((report) => {
  console.log(JSON.stringify(report));
  client.close();
  process.exit(0);
}, (error: unknown) => {
  console.error(error);
  process.exit(1);
});
