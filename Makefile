# Every target creates the virtual environment .venv on first use, from the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install train describe test figures gpu-check lint format lock

install: $(BIN)/.installed

# requirements.lock pins every package (scripts/lock.py); pyproject.toml keeps the ranges
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c requirements.lock -e ".[dev]"
	touch $@

# the offline quickstart; more Hydra overrides as ARGS="trainer.epochs=10 ..."
train: install
	$(BIN)/python scripts/train.py experiment=digits $(ARGS)

# the model a config builds, without training it
describe: install
	$(BIN)/python scripts/describe.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q -n auto

# every figure of the README and docs/ (docs/figures/*.png), from the committed results/
figures: install
	$(BIN)/python scripts/figures.py

# the first run on a GPU machine: versions, CUDA tests, every scheme, syncs, benchmark,
# the Fashion-MNIST recipe, class folders; writes outputs/gpu_check/report.md (not yet run on a GPU)
gpu-check: install
	$(BIN)/python scripts/gpu_check.py $(ARGS)

# ruff: lint and format check, as CI runs it; `make format` rewrites the files
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# re-resolve every dependency to the newest releases pyproject.toml allows, then rebuild
# .venv from the new lock and run the tests on it; commit requirements.lock if they pass
lock:
	$(PYTHON) scripts/lock.py
	rm -rf $(VENV)
	$(MAKE) test
