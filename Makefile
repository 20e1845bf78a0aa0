# kale-pool: one-command setup. `make run` starts the pool on embedded defaults,
# `make test` runs every check CI runs. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kale-pool-installed
RUST_SOURCES := $(shell find miner_ext/src -name "*.rs" 2>/dev/null) miner_ext/Cargo.toml miner_ext/Cargo.lock miner_ext.pyi
CARGO := cargo
CARGO_FLAGS := --manifest-path miner_ext/Cargo.toml
# Builds use the versions in Cargo.lock as committed (pyproject's [tool.maturin] says the
# same for the wheel): a lock that disagrees with Cargo.toml fails instead of being rewritten.
CARGO_BUILD_FLAGS := $(CARGO_FLAGS) --locked

# Python dependencies come from the lock files, every one pinned with its hashes
# (`make lock` regenerates them from pyproject.toml): requirements-dev.lock is what `make`
# installs (runtime, dev and test tools, and the build backend maturin, so the project's
# own build uses the locked maturin too); requirements.lock the runtime alone and
# requirements-build.lock the build backend alone (the image's two stages).
UV_COMPILE := UV_CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/uv pip compile --quiet --universal --generate-hashes --python-version 3.11

.PHONY: run test test-python test-rust lint bench bench-miner bench-agent bench-assignments \
	bench-rpc bench-db bench-plant bench-replicas bench-onboard bench-harvest faults fuzz proto clean lock \
	chromium screenshots browser-cycle

# The project itself: --no-deps (its dependencies came from the lock) and no build
# isolation (the build backend too). pip then runs maturin's backend from the venv, which
# calls the `maturin` program by name, so the venv's bin goes first on PATH.
$(STAMP): pyproject.toml requirements-dev.lock $(RUST_SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kale-pool needs Python >= 3.11, found " + sys.version.split()[0])'
	@command -v $(CARGO) >/dev/null || { echo "kale-pool needs a Rust toolchain (cargo) to build miner_ext"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Rewrites the three lock files from pyproject.toml (uv comes from the dev lock); commit
# the result. The build lock is compiled from [build-system] requires, its one home.
lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml -o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements-dev.lock
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
	  | $(UV_COMPILE) - -o requirements-build.lock

# Options for `kale-pool up`: make run ARGS="--poolers 2 --farmers 10".
ARGS ?=

run: $(STAMP)
	@echo "kale-pool is in $(BIN) (not on PATH): $(BIN)/kale-pool --help, or source $(BIN)/activate"
	$(BIN)/kale-pool up $(ARGS)

test: lint test-rust test-python

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(CARGO) fmt $(CARGO_FLAGS) --check
	$(CARGO) clippy $(CARGO_BUILD_FLAGS) --all-targets -- -D warnings

test-rust: $(STAMP)
	$(CARGO) test $(CARGO_BUILD_FLAGS)

# Two workers: much of the suite waits on ledgers and processes, so two run in the time
# of one; a test module stays on one worker (its module-scoped stages are built once).
test-python: $(STAMP) chromium
	$(BIN)/python -m pytest -n 2 --dist loadscope --durations=15

# The browser tests (tests/web/test_browser*.py) drive the system's Chromium, never a
# browser Playwright downloads: Debian's `chromium` is installed here when it is missing
# and this machine can (root, apt-get). Without one those tests skip, naming the package.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || [ -n "$$KALE_POOL_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
	         --no-install-recommends chromium; } \
	    || echo "chromium could not be installed: the browser tests will skip"; \
	else echo "no Chromium (install Debian's chromium package): the browser tests will skip"; fi

# The page's screenshots in docs/images (docs/farmers.md shows them), from the browser
# tests' own runs: the fast ones and the whole cycle (its pool and dashboard farming).
screenshots: $(STAMP) chromium
	KALE_POOL_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/web/test_browser.py -n 0 -q
	KALE_POOL_SCREENSHOTS=docs/images $(BIN)/python -m pytest \
	  tests/web/test_browser_cycle.py -n 0 -q --timeout=900

# A farmer's whole cycle in the browser against `kale-pool up`: join, fund, watch a block
# planted, worked and harvested with its reward, withdraw, leave (a few minutes).
browser-cycle: $(STAMP) chromium
	$(BIN)/python -m pytest tests/web/test_browser_cycle.py -n 0 -q \
	  --timeout=900 $(ARGS)

# Every benchmark but the plant throughput (docs/performance.md), each beside its reference
# measured in the same run, each writing its figures under bench/results/ (about 15 min).
bench: bench-miner bench-agent bench-assignments bench-rpc bench-db

bench-miner: $(STAMP)
	$(BIN)/python bench/miner_bench.py --json bench/results/miner.json

# The pooler agent mining 50 farmers at once against one plain search on the same cores.
bench-agent: $(STAMP)
	$(BIN)/python bench/agent_bench.py $(ARGS)

# Plant recorded -> assignment on StreamAssignments, 10 poolers x 200 farmers.
bench-assignments: $(STAMP)
	$(BIN)/python bench/assign_bench.py $(ARGS)

# Every PoolerService RPC under 10 poolers x 200 farmers, beside the health check.
bench-rpc: $(STAMP)
	$(BIN)/python bench/rpc_bench.py $(ARGS)

# Every statement the services ran, over a million event rows, beside a primary-key lookup.
bench-db: $(STAMP)
	$(BIN)/python bench/db_bench.py $(ARGS)

# Plant throughput of one backend beside the devnet's own ceiling (docs/performance.md):
# make bench-plant ARGS="--farmers 200 500".
bench-plant: $(STAMP)
	$(BIN)/python bench/plant_bench.py $(ARGS)

# Plant throughput with 1, 2 and 3 pool replicas and wallet processes on one database
# (docs/performance.md, "Replicas"): make bench-replicas ARGS="--farmers 500".
bench-replicas: $(STAMP)
	$(BIN)/python bench/replicas_bench.py $(ARGS)

# Onboarding (RegisterFarmer, ConfirmFunding) and harvests of worked pails, each beside
# the same ceiling, with each process's peak memory (docs/performance.md):
# make bench-onboard ARGS="--farmers 500 2000 --concurrency 1000".
bench-onboard: $(STAMP)
	$(BIN)/python bench/onboard_bench.py $(ARGS)

bench-harvest: $(STAMP)
	$(BIN)/python bench/harvest_bench.py $(ARGS)

# The whole fault matrix against the real processes of `kale-pool up` (about half an
# hour); the table in docs/reliability.md is rewritten with the figures it prints.
faults: $(STAMP)
	$(BIN)/python -m tests.faults.matrix --write docs/reliability.md $(ARGS)

# Bad input over every RPC, many more examples than the suite's 15 (FUZZ_EXAMPLES=N).
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP)
	KALE_POOL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/pool/test_bad_input.py -n 0 -q --timeout=0 $(ARGS)

proto: $(STAMP)
	$(BIN)/python -m kalepool.protogen

clean:
	rm -rf $(VENV) miner_ext/target .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
