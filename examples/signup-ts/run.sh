#!/usr/bin/env bash
# `make dev-ts`: a dev server (`stepline dev`, data in a temporary directory) and this example's
# TypeScript worker; signs usr_123 up; Ctrl-C stops the worker (it drains), then the server.
set -euo pipefail
cd "$(dirname "$0")"
data=$(mktemp -d /tmp/stepline-dev-ts-XXXXXX)
url=${STEPLINE_URL:-127.0.0.1:7288}
../../.venv/bin/stepline serve --address "$url" --database-url "sqlite:///$data/stepline.db" \
  >"$data/server.log" 2>&1 &
server=$!
worker=""
cleanup() {
  [ -n "$worker" ] && kill -TERM "$worker" 2>/dev/null && wait "$worker" || true
  kill -TERM "$server" 2>/dev/null && wait "$server" || true
  echo "==> the outbox:"; cat "$data/outbox.jsonl" 2>/dev/null || echo "(empty)"
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
for _ in $(seq 1 100); do
  grep -q "listening" "$data/server.log" 2>/dev/null && break
  sleep 0.1
done
SIGNUP_OUTBOX="$data/outbox.jsonl" ONBOARDING_DELAY="${ONBOARDING_DELAY:-3s}" STEPLINE_URL="$url" \
  node dist/app.js &
worker=$!
sleep 1
STEPLINE_URL="$url" ../../.venv/bin/stepline send user/signup.completed '{"userId": "usr_123"}'
echo "==> the signup-ts worker is running; dashboard: see $data/server.log"
echo "    outbox: $data/outbox.jsonl; Ctrl-C stops the worker, then the server"
wait "$worker"
