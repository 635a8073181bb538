# The two set-up commands of the README: `make run` (the main job on the embedded default)
# and `make test`. Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE ?= ./appsim-store
# The demo data ends here (fixed, so every clone gets the same data and the same results).
DEMO_END := 2026-11-02T00:00:00Z

.PHONY: run test bench bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

$(VENV)/.installed-run: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

$(VENV)/.installed-test: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[aws,serve,spark,dev]"
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	@test -f $(STORE)/catalog/apps.parquet || $(BIN)/appsim simulate --store $(STORE) --end $(DEMO_END)
	$(BIN)/appsim retrain --store $(STORE) --param window_end=$(DEMO_END)
	$(BIN)/appsim registry list --store $(STORE)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

# The quality bench's real dataset: MovieLens 100K ships inside the recbole wheel (only its data files are read,
# so no dependencies); its licence forbids redistribution, so it is installed, never committed.
bench-data: $(VENV)/.installed-test
	$(BIN)/pip install -q --no-deps "recbole==1.2.1"

clean:
	rm -rf $(VENV) $(STORE) *.egg-info .pytest_cache
