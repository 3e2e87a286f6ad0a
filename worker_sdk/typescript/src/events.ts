// Events as a function receives them (Event) and as code sends them (EventInput).
import { createHash } from "node:crypto";
import { InvalidUsageError } from "./errors.js";
import { toMs, timestamp, type EventMessage } from "./proto.js";

export type JsonValue =
  | string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: unknown };

/** An event as a function receives it. */
export interface Event<TData = JsonObject> {
  name: string;
  data: TData;
  id: string;
  ts: Date | null;
  user: JsonObject | null;
}

/** An event to send. Without an id the server assigns one; with one, a repeat is a no-op. */
export interface EventInput<TData extends JsonObject = JsonObject> {
  name: string;
  data?: TData;
  id?: string;
  ts?: Date;
  user?: JsonObject;
}

// The server's limits (stepline_server/limits.py).
export const MAX_NAME_LENGTH = 256;
export const MAX_EVENT_ID_LENGTH = 128;
const EVENT_KEYS = new Set(["name", "data", "id", "ts", "user"]);

export function eventFromMessage(message: EventMessage | null): Event {
  if (message === null) return { name: "", data: {}, id: "", ts: null, user: null };
  return {
    name: message.name,
    data: message.data.length ? JSON.parse(message.data.toString("utf8")) as JsonObject : {},
    id: message.id,
    ts: message.ts ? new Date(toMs(message.ts)) : null,
    user: message.user?.length ? JSON.parse(message.user.toString("utf8")) as JsonObject : null,
  };
}

/** A waitForEvent step's result: {id, name, data, ts (ms), user}, or null after the timeout. */
export function eventFromJson(value: unknown): Event | null {
  if (value === null || typeof value !== "object") return null;
  const v = value as { id?: string; name: string; data?: JsonObject; ts?: number | null;
    user?: JsonObject | null };
  return {
    name: v.name, data: v.data ?? {}, id: v.id ?? "",
    ts: v.ts === null || v.ts === undefined ? null : new Date(v.ts), user: v.user ?? null,
  };
}

/** The id of a sendEvent step's `index`th event when the caller gave none: the Python SDK's. */
export function sentEventId(runId: string, stepId: string, index: number): string {
  return createHash("sha256").update(`${runId}\0${stepId}\0${index}`).digest("hex").slice(0, 32);
}

export function checkText(value: string, what: string, limit: number): void {
  if (value.length > limit) {
    throw new InvalidUsageError(`${what}: longer than ${limit} characters (${value.length})`);
  }
  if (value.includes("\0")) {
    throw new InvalidUsageError(`${what}: contains a NUL character, which is not allowed`);
  }
}

export function encodeJson(value: unknown, what: string, errorType: new (m: string) => Error
  = InvalidUsageError): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value, (_key, v: unknown) => {
      if (typeof v === "number" && !Number.isFinite(v)) throw new Error(`${v} is not JSON`);
      if (typeof v === "bigint") throw new Error("a BigInt is not JSON");
      return v;
    });
  } catch (error) {
    throw new errorType(`${what} is not JSON-serializable: ${(error as Error).message}`);
  }
  return text ?? "null"; // undefined (a function that returns nothing) is stored as null
}

function jsonObject(value: unknown, what: string): Buffer {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new InvalidUsageError(`${what}: expected a JSON object; got ${JSON.stringify(value)}`);
  }
  return Buffer.from(encodeJson(value, what), "utf8");
}

/** The message to send; InvalidUsageError for what the server would refuse. */
export function eventMessage(item: unknown, what: string): EventMessage {
  if (item === null || typeof item !== "object" || Array.isArray(item)) {
    throw new InvalidUsageError(`${what}: expected an event object with a "name"`);
  }
  const unknownKeys = Object.keys(item).filter((k) => !EVENT_KEYS.has(k));
  if (unknownKeys.length) {
    throw new InvalidUsageError(
      `${what}: unknown key(s) ${unknownKeys.join(", ")}; an event takes name, data, id, ts, user`);
  }
  const event = item as EventInput;
  if (typeof event.name !== "string" || !event.name) {
    throw new InvalidUsageError(`${what}.name: expected a non-empty string`);
  }
  checkText(event.name, `${what}.name`, MAX_NAME_LENGTH);
  if (event.id !== undefined && typeof event.id !== "string") {
    throw new InvalidUsageError(`${what}.id: expected a string`);
  }
  checkText(event.id ?? "", `${what}.id`, MAX_EVENT_ID_LENGTH);
  const message: EventMessage = {
    id: event.id ?? "", name: event.name, data: jsonObject(event.data ?? {}, `${what}.data`),
  };
  if (event.user !== undefined) message.user = jsonObject(event.user, `${what}.user`);
  if (event.ts !== undefined) {
    if (!(event.ts instanceof Date)) throw new InvalidUsageError(`${what}.ts: expected a Date`);
    message.ts = timestamp(event.ts);
  }
  return message;
}

/** A sendEvent step's events, each with its id (the caller's, or derived from run and step). */
export function stepEvents(events: unknown, runId: string, stepId: string,
  what: string): EventMessage[] {
  const items = Array.isArray(events) ? events : [events];
  if (items.length === 0) {
    throw new InvalidUsageError(`${what}: expected an event or a non-empty array of events`);
  }
  return items.map((item, index) => {
    const message = eventMessage(item, `${what}[${index}]`);
    if (!message.id) message.id = sentEventId(runId, stepId, index);
    return message;
  });
}
