# make demo: create .venv if missing, install the project, train on the embedded digits data.
# make test: the same install, then lint + format check + the fast test suite (CI runs this).
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow lint format bench clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) launch/demo.py

lint: install
	$(VENV)/bin/ruff check tempscale_tf benchmarks launch configs tests
	$(VENV)/bin/ruff format --check tempscale_tf benchmarks launch configs tests

format: install
	$(VENV)/bin/ruff format tempscale_tf benchmarks launch configs tests
	$(VENV)/bin/ruff check --fix tempscale_tf benchmarks launch configs tests

# Two pytest workers: much of a tiny-data test is single-threaded (TensorFlow's import in each
# launcher subprocess, tracing), so two processes keep both cores busy. `worksteal` balances the
# long end-to-end tests between them. The 20 slowest tests are listed at the end, for trimming.
test: lint
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=20

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) launch/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
