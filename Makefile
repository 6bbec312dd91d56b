# The two commands of the README: `make demo` and `make test`. Both install what they need
# into .venv first (re-installed only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo
# The unit tier's tests share no server: they run in two processes (pytest-xdist). The other
# tiers share one Prefect stack, Slurm or nginx per session, so they run in one.
UNIT_WORKERS := -n 2

.PHONY: install demo demo-down test check lint bench bench-prompt bench-slurm bench-dashboard bench-healing clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The prompt-calibration loop on this machine: toy data for eight runs (a t0 jump at run 5, the
# beam spot moving at run 4, run 6 with low statistics) lands in the local site's storage; the
# local stack (Prefect server, a worker, the deployments) starts; discovery registers the files
# and closes the bucket; its prompt request runs all four reference calibrations through the
# deployments, validates them and (the local site's policy) approves them; the payloads land in
# the request's staging tag. Then the constants, the staging tag, the closure check against
# the truth; a second request made with Prefect's own CLI (ChannelT0 on runs 1-4); and where
# the Prefect UI is. The stack stays up: `make demo-down` stops it.
DEMO_HOME := $(CURDIR)/$(DEMO)/home
demo: export B2CAL_HOME := $(DEMO_HOME)
demo: install
	-$(BIN)/b2cal server down >/dev/null 2>&1
	rm -rf $(DEMO)
	$(BIN)/b2cal toy generate --storage $(DEMO_HOME)/storage --exp 1 --runs 1-8 \
		--t0-jumps 5 --beamspot-changes 4 --low-stat 6=60 --seed 2026
	$(BIN)/b2cal server up --sites local --discover
	$(BIN)/b2cal request wait --exp 1 --bucket 1 --timeout 600
	$(BIN)/b2cal request show 1 --constants
	$(BIN)/b2cal cdb show staging-prompt-1
	$(BIN)/b2cal toy closure --output $(DEMO_HOME)/work/requests/1/output \
		--truth $(DEMO_HOME)/storage/truth.json
	@echo "validation reports: $(DEMO_HOME)/work/requests/1/validation/<Calibration>/validation.md"
	@echo "  and in the Prefect UI: Artifacts, search request-1 (docs/orchestration.md, Artifacts)"
	$(BIN)/prefect deployment run calibration-request/local -p exp=1 -p runs=1-4 \
		-p 'calibrations=["ChannelT0"]' --watch
	$(BIN)/b2cal request show 2
	$(BIN)/b2cal server status
	@echo "the stack stays up for the UI; stop it with: make demo-down"

demo-down: export B2CAL_HOME := $(DEMO_HOME)
demo-down: install
	$(BIN)/b2cal server down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every test, tier by tier (CI runs this; tests/conftest.py says what each tier needs): unit,
# then services (PostgreSQL and MariaDB are started if needed, nginx, Slurm), then stack (the
# local Prefect stack, a browser). Every tier runs even if one fails; each tier's time is
# printed at the end.
test: lint
	bash scripts/services.sh
	bash scripts/tools.sh
	@status=0; times=""; for tier in unit services stack; do \
		start=$$(date +%s); \
		echo "== tier $$tier"; \
		if [ $$tier = unit ]; then spread="$(UNIT_WORKERS)"; else spread=""; fi; \
		$(BIN)/pytest -m $$tier $$spread --durations=15 || status=1; \
		times="$$times $$tier $$(( $$(date +%s) - start )) s;"; \
	done; \
	echo "tier times:$$times"; exit $$status

# The quick loop while developing: lint, types and the unit tier (no service, no Prefect).
check: lint
	$(BIN)/pytest -m unit $(UNIT_WORKERS)

# Ratios against baselines measured in the same run. The engine-overhead data set is sized so
# that its baseline takes over a minute: about 20 minutes in all and 8 GB of temporary disk.
bench: install
	$(BIN)/python bench/collector_throughput.py
	$(BIN)/python bench/engine_overhead.py

# A prompt request through Prefect against the bare script, on a bucket where the bare script
# takes over 5 minutes (~30 GB of toy data, kept in B2CAL_BENCH_DATA if set; about an hour).
bench-prompt: install
	$(BIN)/python bench/prompt_request.py 72 10 360000 1

# 1000 short jobs on a loopback Slurm (started and stopped by scripts/slurm.sh, as root).
bench-slurm: install
	$(BIN)/python bench/slurm_submit.py 1000 1

# The overview's cost at 50 buckets x 20 calibrations, 20 sessions through nginx, 200
# requests/s on the proxy-certificate API (60 s each; nginx from scripts/tools.sh; ~5 minutes).
bench-dashboard: install
	bash scripts/tools.sh
	$(BIN)/python bench/dashboard.py 60

# Heal times of a request whose flow-run process (or process and worker) was killed, against the
# same request left alone, and the reconciler's pass over 1000 active flow runs (~10 minutes).
bench-healing: install
	$(BIN)/python bench/healing.py

clean:
	rm -rf build $(VENV) *.egg-info
