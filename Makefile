# The two commands of the README: `make demo` runs the main job, `make test` runs every test.
# Each creates its own virtualenv (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps bench bench-detection bench-backtest bench-stream bench-gate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/detector demo

lint: $(STAMP)
	$(BIN)/ruff check detector tests bench deploy
	$(BIN)/ruff format --check detector tests bench deploy
	$(BIN)/mypy

# Prometheus, Alertmanager and docker-compose for the deploy tests (apt, when missing).
system-deps:
	scripts/system-deps

test: lint system-deps
	$(BIN)/pytest

bench: bench-detection bench-backtest bench-stream bench-gate

bench-detection: $(STAMP)
	$(BIN)/python -m bench.detection

bench-backtest: $(STAMP)
	$(BIN)/python -m bench.backtest_speed

bench-stream: $(STAMP)
	$(BIN)/python -m bench.stream_speed

bench-gate: $(STAMP)
	$(BIN)/python -m bench.gate_speed

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache
