// Durations as the SDK takes them: milliseconds (a number, as setTimeout takes), or a string of
// numbers with units ms s m h d w ("30s", "1h30m", "500ms"). Whole milliseconds, like the
// server's clock; at most 366 days, the longest sleep, wait or timeout the server accepts.
import { InvalidUsageError } from "./errors.js";

export type DurationLike = number | string;

const UNITS: Record<string, number> = {
  ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000,
};
const PART = /\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*/y;
const FORMS = 'milliseconds, or a string of numbers with units ms s m h d w, e.g. "30s", "1h30m"';
export const MAX_DURATION_MS = 366 * 86_400_000;

function parseText(text: string, what: string): number {
  let position = 0;
  let ms = 0;
  while (position < text.length) {
    PART.lastIndex = position;
    const match = PART.exec(text);
    if (match === null) break;
    ms += Number(match[1]) * (UNITS[match[2] ?? ""] ?? 0);
    position = PART.lastIndex;
  }
  if (position === 0 || position < text.length) {
    throw new InvalidUsageError(`${what}: expected ${FORMS}; got ${JSON.stringify(text)}`);
  }
  return ms;
}

/** `value` in whole milliseconds; InvalidUsageError (naming `what`) when it is not a duration. */
export function parseDuration(value: unknown, what: string, allowZero = false): number {
  let ms: number;
  if (typeof value === "number") ms = value;
  else if (typeof value === "string") ms = parseText(value, what);
  else throw new InvalidUsageError(`${what}: expected ${FORMS}; got ${String(value)}`);
  if (!Number.isFinite(ms) || ms < 0) {
    throw new InvalidUsageError(`${what}: must be a finite, non-negative duration; got ${value}`);
  }
  if (ms > MAX_DURATION_MS) {
    throw new InvalidUsageError(`${what}: ${JSON.stringify(value)} is longer than the limit of 366 days`);
  }
  const rounded = Math.round(ms);
  if (!allowZero && rounded === 0) {
    throw new InvalidUsageError(`${what}: must be at least 1ms; got ${JSON.stringify(value)}`);
  }
  return rounded;
}

/** A retry delay: like a duration, but a negative number means "now" (a reset already past). */
export function parseDelay(value: unknown, what: string): number {
  if (typeof value === "number" && Number.isFinite(value) && value < 0) return 0;
  return parseDuration(value, what, true);
}

/** A point in time: a Date or an ISO 8601 string with Z or an offset. */
export function parseTime(value: unknown, what: string): Date {
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new InvalidUsageError(`${what}: invalid Date`);
    return value;
  }
  if (typeof value === "string" && /(Z|[+-]\d\d:?\d\d)$/i.test(value.trim())) {
    const date = new Date(value.trim());
    if (!Number.isNaN(date.getTime())) return date;
  }
  throw new InvalidUsageError(
    `${what}: expected a Date or an ISO 8601 time with Z or an offset, e.g. ` +
    `"2030-01-31T09:00:00Z"; got ${JSON.stringify(value)}`);
}
