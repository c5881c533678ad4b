# edgeml: everything starts from a bare python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo demo-fleet test test-fast test-slow test-arm test-browser chromium lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[host,sign,broker,dev,fleet]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m edgeml.demo

# The whole loop: train, flash agents, monitor, drift, retrain, canary, promote (needs Mosquitto).
demo-fleet: install
	$(BIN)/python -m edgeml.demo_fleet

lint: install
	$(BIN)/ruff check edgeml tests bench
	$(BIN)/mypy edgeml

test: install lint
	$(PYTEST) -q --durations=25

test-slow: install
	$(PYTEST) -q -m slow --durations=25

# The dashboard's browser tests: Debian's Chromium driven by Playwright (part of `make test`).
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

test-browser: install chromium
	$(PYTEST) -q tests/test_dashboard_browser.py -p no:cacheprovider

test-arm: install
	$(PYTEST) -q -m arm -p no:cacheprovider

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
