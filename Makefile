# `make run` installs the project into .venv and runs the default pipeline (`dvc repro`);
# `make test` installs it with the test extra and runs the whole test suite (what CI runs).
# Both are idempotent: the install step is skipped while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# Quiet pip's notes about optional local mirror folders that this machine may lack.
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install run test test-fast bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[test]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import mmdisco, torch, torchaudio, decord, av, dvc, mlflow, diffusers" 
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	test -d .dvc || $(BIN)/dvc init -q
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

# While editing: everything except the end-to-end tests marked `slow` (DVC pipeline runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean-venv:
	rm -rf $(VENV)
