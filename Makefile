# Every target creates the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install train describe test

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[dev]"
	touch $@

# the offline quickstart; more Hydra overrides as ARGS="trainer.epochs=10 ..."
train: install
	$(BIN)/python scripts/train.py experiment=digits $(ARGS)

# the model a config builds, without training it
describe: install
	$(BIN)/python scripts/describe.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q
