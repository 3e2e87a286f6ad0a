// The signup example in TypeScript: a worker of app "signup-ts" serving the functions of
// functions.ts (the Python example's welcome email, onboarding follow-up and weekly digest).
// Start it, with a dev server, by `make dev-ts`; `functions.test.ts` tests the functions
// without a server.
import { app } from "./functions.js";

await app.worker({ slots: 10 }).run(); // until SIGTERM or Ctrl-C, then drains
