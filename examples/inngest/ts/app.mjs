// The signup example written with the official Inngest TypeScript SDK (npm `inngest` v4),
// served by node:http, running on Stepline unmodified: only the environment points it there.
//
//   stepline dev                                          # one terminal (HTTP on :8288)
//   make inngest-node                                     # once: npm ci in examples/inngest/ts
//   INNGEST_DEV=http://127.0.0.1:8288 node examples/inngest/ts/app.mjs   # another terminal
//
// Then `stepline send user/signup.completed '{"userId": "usr_123"}'` and watch the runs on
// http://127.0.0.1:8288. Emails go to an in-memory outbox (printed).
import http from "node:http";
import { Inngest, NonRetriableError } from "inngest";
import { serve } from "inngest/node";

const inngest = new Inngest({ id: "signup-inngest-ts" });
const USERS = {
  usr_123: { id: "usr_123", email: "ada@example.com", name: "Ada" },
  usr_456: { id: "usr_456", email: "grace@example.com", name: "Grace" },
};
const ONBOARDING_DELAY = `${process.env.ONBOARDING_SECONDS ?? 86400}s`;
const outbox = new Map();

const fetchUser = (userId) => {
  // Retrying cannot make an unknown user appear: fail the run now.
  if (!(userId in USERS)) throw new NonRetriableError(`no user ${JSON.stringify(userId)}`);
  return USERS[userId];
};

const send = (messageId, user, subject) => {
  // Keyed by a message id derived from the run: a retried step sends no second email.
  if (!outbox.has(messageId)) outbox.set(messageId, { to: user.email, subject });
  console.log(`outbox: ${messageId} to ${user.email}: ${subject}`);
  return messageId;
};

const sendWelcomeEmail = inngest.createFunction(
  { id: "send-welcome-email", retries: 3, triggers: [{ event: "user/signup.completed" }] },
  async ({ event, step, runId }) => {
    const user = await step.run("fetch-user", () => fetchUser(event.data.userId));
    const messageId = await step.run("send-email",
      () => send(`msg_${runId}`, user, "Welcome to Stepline!"));
    const sentAt = await step.run("mark-email-sent", () => new Date().toISOString());
    return { success: true, userId: user.id, messageId, sentAt };
  },
);

const onboarding = inngest.createFunction(
  { id: "onboarding", retries: 3, triggers: [{ event: "user/signup.completed" }] },
  async ({ event, step, runId }) => {
    const user = await step.run("fetch-user", () => fetchUser(event.data.userId));
    const upgrade = await step.waitForEvent("wait-for-upgrade", {
      event: "billing/upgraded", match: "data.userId", timeout: ONBOARDING_DELAY,
    });
    if (upgrade !== null) return { userId: user.id, upgraded: true, plan: upgrade.data.plan };
    const followUp = await step.run("send-follow-up",
      () => send(`followup_${runId}`, user, "Getting on with Stepline?"));
    return { userId: user.id, upgraded: false, followUp };
  },
);

const weeklyDigest = inngest.createFunction(
  { id: "weekly-digest", triggers: [{ cron: "TZ=Europe/Paris 0 9 * * 1" }] },
  async ({ step, runId }) => {
    const sent = [];
    for (const user of Object.values(USERS)) {
      sent.push(await step.run(`send-digest-${user.id}`,
        () => send(`digest_${runId}_${user.id}`, user, "Your Stepline week")));
    }
    return { sent };
  },
);

const port = Number(process.env.PORT ?? 3000);
const server = http.createServer(serve({
  client: inngest, functions: [sendWelcomeEmail, onboarding, weeklyDigest],
}));
server.listen(port, "127.0.0.1", async () => {
  // Register with the server, as the Inngest dev server's auto-discovery does: a PUT to the
  // app's own endpoint.
  const answer = await fetch(`http://127.0.0.1:${port}/api/inngest`, { method: "PUT" });
  console.log(`synced: ${await answer.text()}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
process.on("SIGINT", () => server.close(() => process.exit(0)));
