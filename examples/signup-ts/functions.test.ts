// The signup-ts example's own tests, with stepline/testing: each function runs in this process,
// without a server, through the SDK's executor. Steps that touch the outside world are stubbed or
// write to a temporary outbox; the day's wait and the retries take no time. `make ts-test` runs
// them (node:test).
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { run } from "stepline/testing";

const dir = mkdtempSync(join(tmpdir(), "signup-ts-test-"));
const OUTBOX = join(dir, "outbox.jsonl");
process.env.SIGNUP_OUTBOX = OUTBOX; // read when functions.ts loads: import it after
const { sendWelcomeEmail, onboarding, weeklyDigest } = await import("./functions.js");
const START = new Date("2030-01-07T09:00:00Z");
const SIGNUP = { name: "user/signup.completed", data: { userId: "usr_123" } };

function outbox(): { messageId: string; to: string; subject: string }[] {
  if (!existsSync(OUTBOX)) return [];
  return readFileSync(OUTBOX, "utf8").trim().split("\n")
    .map((line) => JSON.parse(line) as { messageId: string; to: string; subject: string });
}

describe("signup-ts", () => {
  beforeEach(() => rmSync(OUTBOX, { force: true }));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("sends the welcome email once, in three steps", async () => {
    const result = await run(sendWelcomeEmail, { event: SIGNUP, runId: "run_1" });
    assert.equal(result.error, null);
    assert.deepEqual(result.stepNames, ["fetch-user", "send-email", "mark-email-sent"]);
    assert.deepEqual(result.output, { success: true, messageId: "msg_run_1" });
    assert.deepEqual(outbox().map((m) => [m.messageId, m.to]), [["msg_run_1", "ada@example.com"]]);
  });

  it("fails at once for an unknown user, without an email", async () => {
    const result = await run(sendWelcomeEmail,
      { event: { data: { userId: "usr_nobody" } } });
    assert.match(result.error?.message ?? "", /no user usr_nobody/);
    assert.equal(result.step("fetch-user").attempts, 1); // NonRetriableError: not retried
    assert.deepEqual(outbox(), []);
  });

  it("uses every retry on a mail server that stays down", async () => {
    const result = await run(sendWelcomeEmail, { event: SIGNUP,
      steps: { "send-email": new Error("smtp down") } });
    assert.equal(result.step("send-email").attempts, 4); // retries: 3
    assert.equal(result.error?.name, "StepError");
    assert.ok(!result.stepNames.includes("mark-email-sent"));
  });

  it("sends no follow-up to a user who upgraded", async () => {
    const result = await run(onboarding, { event: SIGNUP, now: START,
      waits: { upgrade: { data: { userId: "usr_123", plan: "pro" } } } });
    assert.equal(result.output, "upgraded");
    assert.equal(result.waits[0]?.if, "async.data.userId == event.data.userId");
    assert.equal(result.now.getTime(), START.getTime());
    assert.deepEqual(outbox(), []);
  });

  it("follows up after a day without an upgrade, on the fake clock", async () => {
    const result = await run(onboarding, { event: SIGNUP, now: START, runId: "run_2" });
    assert.equal(result.output, "followed-up");
    assert.deepEqual(result.stepNames, ["upgrade", "fetch-user", "send-follow-up"]);
    assert.equal(result.now.getTime() - START.getTime(), 24 * 3_600_000);
    assert.deepEqual(outbox().map((m) => m.messageId), ["follow_run_2"]);
  });

  it("mails the weekly digest to every user, as parallel steps", async () => {
    const result = await run(weeklyDigest, { runId: "run_3",
      steps: { "send-digest:1": "stubbed" } });
    assert.deepEqual(result.output, { sent: 3 });
    assert.deepEqual(result.steps.map((s) => s.id).sort(),
      ["send-digest", "send-digest:1", "send-digest:2"]);
    assert.deepEqual(outbox().map((m) => m.to).sort(), ["ada@example.com", "edsger@example.com"]);
  });
});
