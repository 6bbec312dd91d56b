# The two commands of the README: `make demo` and `make test`. Both install what they need
# into .venv first (re-installed only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Toy data for eight runs (a t0 jump at run 5, the beam spot moving at run 4, run 6 with low
# statistics), then all four reference calibrations, the closure check against the truth, and
# the payloads through a staging tag into a RUNNING tag of an embedded conditions database.
demo: export B2CAL_HOME := $(CURDIR)/$(DEMO)/home
demo: install
	rm -rf $(DEMO)
	$(BIN)/b2cal toy generate --storage $(DEMO)/storage --exp 1 --runs 1-8 \
		--t0-jumps 5 --beamspot-changes 4 --low-stat 6=60 --seed 2026
	$(BIN)/b2cal caf run --storage $(DEMO)/storage --exp 1 --runs 1-8 \
		--calibrations ChannelGain,BeamSpot --output $(DEMO)/output --open-ended
	$(BIN)/b2cal toy closure --output $(DEMO)/output --truth $(DEMO)/storage/truth.json
	$(BIN)/b2cal cdb create staging --description "demo: experiment 1 runs 1-8"
	for calibration in ChannelT0 ChannelGain ModuleAlignment BeamSpot; do \
		$(BIN)/b2cal cdb upload $(DEMO)/output/$$calibration/outputdb --tag staging || exit 1; done
	$(BIN)/b2cal cdb state staging TESTING
	$(BIN)/b2cal cdb state staging VALIDATED
	$(BIN)/b2cal cdb create running --description "demo: what reconstruction reads"
	$(BIN)/b2cal cdb state running RUNNING
	$(BIN)/b2cal cdb promote staging running --from 1 1
	$(BIN)/b2cal cdb show running

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every test, slow ones included (CI runs this). PostgreSQL and MariaDB are started if needed.
test: lint
	bash scripts/services.sh
	$(BIN)/pytest --durations=25

# The quick loop while developing: no slow tests.
test-fast: install
	$(BIN)/pytest -m "not slow"

# Ratios against baselines measured in the same run. The engine-overhead data set is sized so
# that its baseline takes over a minute: about 20 minutes in all and 8 GB of temporary disk.
bench: install
	$(BIN)/python bench/collector_throughput.py
	$(BIN)/python bench/engine_overhead.py

clean:
	rm -rf build $(VENV) *.egg-info
