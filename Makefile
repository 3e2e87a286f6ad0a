# The front door: `make dev` tries Stepline, `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup ts ts-test ts-example dev-ts chromium inngest-node dev test test-sqlite test-postgres proto proto-check lint bench chaos clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The TypeScript SDK (worker_sdk/typescript): its locked dependencies, installed with `npm ci`
# (Node 20+ and npm), then its build, its type tests (tsc over test/types.ts) and unit tests.
TS := worker_sdk/typescript
TS_STAMP := $(TS)/node_modules/.installed

$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(TS_STAMP)

ts: $(TS_STAMP)

# The SDK's tests, then the TypeScript example's own (examples/signup-ts/functions.test.ts).
ts-test: $(TS_STAMP)
	cd $(TS) && npm test --silent
	$(MAKE) --no-print-directory ts-example
	node --test examples/signup-ts/dist/functions.test.js

# The official npm Inngest SDK (examples/inngest/ts, from its lock file) for the Inngest tests
# and the TypeScript example; Node 20 or later.
INNGEST_NODE := examples/inngest/ts/node_modules/.installed
$(INNGEST_NODE): examples/inngest/ts/package-lock.json
	cd examples/inngest/ts && npm ci --no-audit --no-fund
	touch $@

inngest-node: $(INNGEST_NODE)

# Debian's Chromium for the dashboard's browser tests (they fail, saying why, without it).
chromium:
	-@.ci/install-chromium

# The signup demo: checks its runs, then keeps the server, the worker and the dashboard up until
# Ctrl-C. The tests run its one-shot form, `examples/signup/demo.py --check`.
dev: $(STAMP)
	$(BIN)/python examples/signup/demo.py

# The signup example in TypeScript (examples/signup-ts): a dev server and its worker; Ctrl-C stops.
dev-ts: $(STAMP) $(TS_STAMP) ts-example
	examples/signup-ts/run.sh

ts-example: $(TS_STAMP)
	cd $(TS) && npm run build --silent
	mkdir -p examples/signup-ts/node_modules && ln -sfn ../../../$(TS) examples/signup-ts/node_modules/stepline
	$(TS)/node_modules/.bin/tsc -p examples/signup-ts/tsconfig.json

# Lint first: a style slip fails CI like a failing test.
# The 20 slowest tests are listed at the end: the suite is to stay under ~20 minutes.
test: $(STAMP) $(TS_STAMP) chromium inngest-node proto-check lint ts-test
	$(BIN)/python -m pytest -q --durations=20 tests examples/signup

test-sqlite: $(STAMP) $(TS_STAMP) chromium inngest-node
	$(BIN)/python -m pytest -q tests examples/signup --backend sqlite

test-postgres: $(STAMP) $(TS_STAMP) chromium inngest-node
	$(BIN)/python -m pytest -q tests examples/signup --backend postgres

proto: $(STAMP)
	rm -f worker_sdk/stepline/v1/*_pb2*.py worker_sdk/stepline/v1/*_pb2*.pyi
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=worker_sdk --grpc_python_out=worker_sdk --pyi_out=worker_sdk \
		protos/stepline/v1/*.proto

# Fails when the committed stubs differ from what `make proto` produces.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d); \
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=$$tmp --grpc_python_out=$$tmp \
		--pyi_out=$$tmp protos/stepline/v1/*.proto; \
	for f in $$tmp/stepline/v1/*; do \
		cmp -s $$f worker_sdk/stepline/v1/$$(basename $$f) || { \
			echo "stale generated code: $$(basename $$f); run 'make proto' and commit"; exit 1; }; \
	done; rm -rf $$tmp

lint: $(STAMP)
	$(BIN)/ruff check server worker_sdk tests examples bench chaos conformance
	$(BIN)/mypy server worker_sdk
	MYPYPATH=worker_sdk $(BIN)/mypy conformance

# Then the TypeScript worker's 3-step latency and throughput next to the Python worker's.
bench: $(STAMP) $(TS_STAMP) inngest-node
	$(BIN)/python bench/run.py
	$(BIN)/python bench/flow_concurrency.py
	$(BIN)/python bench/bridge.py
	$(BIN)/python bench/typescript.py
	$(BIN)/python bench/inngest_http.py
	$(BIN)/python bench/inngest_checkpoint.py
	$(BIN)/python bench/flow_timers.py

# The fault soak, 10,000 runs per backend (7-9 minutes); it restarts the local PostgreSQL
# cluster once. More knobs: make chaos CHAOS_ARGS='--backend sqlite --runs 2000 --seed 7'.
chaos: $(STAMP)
	$(BIN)/python -m chaos --restart-postgres $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache stepline-dev.db* $(TS)/node_modules $(TS)/dist $(TS)/dist-test
