# Two commands on a fresh machine:
#   make run   -> install, then start the dashboard + an embedded worker (demo data bundled)
#   make test  -> install, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/bpnet-studio up

test: install
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q --durations=25

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
