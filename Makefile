# make repro: the whole DVC pipeline; make test: the test suite; make bench: reports/bench.{json,md}.
# The virtual environment is created on first use and reinstalled only when pyproject.toml changes.
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: repro test bench clean-venv

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(INSTALLED)

# DVC runs each stage's `python -m stages.X` through the shell: the venv must come first on PATH.
repro: $(INSTALLED)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: $(INSTALLED)
	$(VENV)/bin/pytest

bench: $(INSTALLED)
	$(PY) -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
