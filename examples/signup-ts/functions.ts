// The signup example's functions (app "signup-ts"): the Python example's welcome email,
// onboarding follow-up and weekly digest (examples/signup/app.py). app.ts runs them in a worker;
// functions.test.ts tests them in-process with stepline/testing.
//
// The emails go to an outbox, a JSON-lines file (SIGNUP_OUTBOX, default ./signup-ts-outbox.jsonl),
// so the example needs no outside service.
import { appendFileSync } from "node:fs";
import { NonRetriableError, Stepline } from "stepline";

export const app = new Stepline({ appId: "signup-ts" }); // server: STEPLINE_URL or 127.0.0.1:7288

const OUTBOX = process.env.SIGNUP_OUTBOX ?? "signup-ts-outbox.jsonl";
// How long a new user has to upgrade before the follow-up email: "24h", "3s", "1h30m"…
const ONBOARDING_DELAY = process.env.ONBOARDING_DELAY ?? "24h";
export const USERS: Record<string, { id: string; email: string; name: string }> = {
  usr_123: { id: "usr_123", email: "ada@example.com", name: "Ada" },
  usr_456: { id: "usr_456", email: "grace@example.com", name: "Grace" },
  usr_789: { id: "usr_789", email: "edsger@example.com", name: "Edsger" },
};

interface Signup { userId: string }

function fetchUser(userId: string) {
  const user = USERS[userId];
  if (user === undefined) throw new NonRetriableError(`no user ${userId}`); // retrying cannot help
  return user;
}

function sendEmail(to: string, subject: string, messageId: string): string {
  appendFileSync(OUTBOX, `${JSON.stringify({ messageId, to, subject })}\n`);
  return messageId;
}

export const sendWelcomeEmail = app.createFunction<Signup>(
  { id: "send-welcome-email", trigger: "user/signup.completed", retries: 3 },
  async ({ event, step, runId }) => {
    const user = await step.run("fetch-user", () => fetchUser(event.data.userId));
    const messageId = await step.run("send-email",
      () => sendEmail(user.email, `Welcome, ${user.name}!`, `msg_${runId}`));
    await step.run("mark-email-sent", () => ({ userId: user.id, sentAt: new Date() }));
    return { success: true, messageId };
  });

export const onboarding = app.createFunction<Signup>(
  { id: "onboarding", trigger: "user/signup.completed",
    cancelOn: [{ event: "user/deleted", if: "async.data.userId == event.data.userId" }],
    timeouts: { finish: "7d" } },
  async ({ event, step, runId }) => {
    const upgrade = await step.waitForEvent("upgrade", { event: "billing/upgraded",
      timeout: ONBOARDING_DELAY, if: "async.data.userId == event.data.userId" });
    if (upgrade !== null) return "upgraded";
    const user = await step.run("fetch-user", () => fetchUser(event.data.userId));
    await step.run("send-follow-up",
      () => sendEmail(user.email, "Need a hand getting started?", `follow_${runId}`));
    return "followed-up";
  });

export const weeklyDigest = app.createFunction(
  { id: "weekly-digest",
    trigger: { cron: process.env.DIGEST_CRON ?? "0 9 * * MON", tz: "Europe/Paris" } },
  async ({ step, runId }) => {
    const sent = await Promise.all(Object.values(USERS).map((user) => step.run(
      "send-digest", () => sendEmail(user.email, "Your weekly digest", `digest_${runId}_${user.id}`))));
    return { sent: sent.length };
  });
