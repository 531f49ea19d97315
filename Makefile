# make repro: the whole DVC pipeline; make test: the test suite; make bench: reports/bench.{json,md};
# make gpu-check: reports/gpu_check.json, the CUDA path in at most 8 minutes on one GPU (one line without CUDA);
# make schema: docs/params.schema.json from the typed params;
# make lock: re-resolve pyproject.toml's requirements into requirements.lock;
# make mlflow-server: a team MLflow tracking server (docs/tracking.md, "Team tracking server").
# The virtual environment is created on first use from the lock (every distribution pinned and hashed)
# and reinstalled only when requirements.lock or pyproject.toml changes.
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LOCK := requirements.lock
# The resolver behind `make lock`, run from a throwaway venv. It reads PyPI only (not pip's config);
# the wheels on the machine's local indexes are byte-identical copies, so their hashes are in the lock.
UV := uv==0.13.9
LOCK_FLAGS ?=

.PHONY: repro test bench gpu-check lock clean-venv mlflow-server schema

# --no-build-isolation: the project builds with the locked setuptools, not whatever the index has today.
$(INSTALLED): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

# DVC runs each stage's `python -m stages.X` through the shell: the venv must come first on PATH.
repro: $(INSTALLED)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: $(INSTALLED)
	$(VENV)/bin/pytest

bench: $(INSTALLED)
	$(PY) -m benchmarks.run

gpu-check: $(INSTALLED)
	$(PY) -m benchmarks.gpu_check

# The JSON Schema of params.yaml (its first line points editors at it), from pipeline/config/schema.py.
schema: $(INSTALLED)
	$(PY) -m pipeline.config.json_schema > docs/params.schema.json

# A database backend store and proxied artifacts (clients upload through the server, no storage
# credentials on their side). MLFLOW_HOST=0.0.0.0 serves the network; MLFLOW_BACKEND=postgresql://...
# and MLFLOW_ARTIFACTS=s3://... for a team (docs/tracking.md).
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 4
MLFLOW_DIR ?= mlflow-server
MLFLOW_BACKEND ?= sqlite:///$(MLFLOW_DIR)/mlflow.db
MLFLOW_ARTIFACTS ?= $(MLFLOW_DIR)/artifacts
MLFLOW ?= $(VENV)/bin/mlflow

mlflow-server: $(INSTALLED)
	mkdir -p $(MLFLOW_DIR)
	exec $(MLFLOW) server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		--backend-store-uri $(MLFLOW_BACKEND) --serve-artifacts --artifacts-destination $(MLFLOW_ARTIFACTS)

# Keeps the current pins where pyproject.toml still allows them; LOCK_FLAGS=--upgrade re-resolves
# everything, LOCK_FLAGS="--upgrade-package dvc" one package. Resolved for this machine's python3.
lock:
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
	python3 -m venv "$$tools" && \
	"$$tools/bin/python" -m pip install --quiet --disable-pip-version-check $(UV) && \
	"$$tools/bin/uv" pip compile --quiet --python "$$tools/bin/python" --generate-hashes \
		--custom-compile-command "make lock" $(LOCK_FLAGS) --output-file $(LOCK) pyproject.toml

clean-venv:
	rm -rf $(VENV)
