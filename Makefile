# `make describe` and `make test` create the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install describe test

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[dev]"
	touch $@

# the model the default config builds; pass Hydra overrides as ARGS="model=vit_small ..."
describe: install
	$(BIN)/python scripts/describe.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q
