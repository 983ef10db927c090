# `make demo` runs the main job, `make test` runs every check (CI), `make test-fast` the quick subset.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_DIR ?= runs/demo
# Test data: the tests read real data sets from here (the product itself uses data.root / GOSSIP_DATA).
GOSSIP_DATA ?= $(abspath ../shared/data)
export GOSSIP_DATA

.PHONY: demo test test-fast lint venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m gossip.launch configs/mnist_4peers.yaml --run-dir $(RUN_DIR) --fresh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gossip tests
	$(VENV)/bin/mypy gossip

test: lint
	$(PY) -m pytest -q

# The edit loop: everything except real peer processes and the browser (about a minute here).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
