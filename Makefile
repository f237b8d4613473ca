# `make demo` and `make test` are the README's contract: each does all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here only for set-up speed: 2.13.0 has a local CPU wheel on our machines;
# the package itself works with torch 2.2-2.14 (pyproject.toml).
TORCH ?= torch==2.13.0

.PHONY: setup setup-test demo test test-fast lint browser docs notebooks train-essay train-equilibrium bench clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

# the test tools (pytest, ruff, playwright) only where the tests run: the main job needs none of them; the
# documentation tools in the same install (`make test` builds the site), one resolution instead of three
$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $(VENV)/.installed $(VENV)/.docs $@

# the live page's tests drive Debian's chromium (never a downloaded browser); they skip without it
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "chromium not installed: tests/test_web.py will skip"

# the documentation tools (MkDocs, Material, mkdocstrings), from PyPI: `make test` builds the site too
$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

demo: setup
	$(VENV)/bin/deqnca demo --device cpu --out out/demo

# two pytest-xdist workers (most tests use one core), then the tests that time themselves, alone
TEST_WORKERS ?= 2

test: setup-test $(VENV)/.docs lint browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not timing" --durations=15
	$(PY) -m pytest -q -m timing --durations=5

# the fast tier: everything but the tests marked slow (trainings, subprocess runs), under a minute
test-fast: setup-test lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" --durations=10

lint: setup-test
	$(VENV)/bin/ruff check .

# the documentation site (MkDocs + Material + mkdocstrings), into site-docs/; tests/test_docs.py builds it too
docs: setup $(VENV)/.docs
	$(PY) -m mkdocs build --strict -d site-docs

# re-run the notebooks in docs/notebooks/ and keep their outputs (what the site shows; tests/test_notebooks.py
# fails when a notebook no longer prints what it was committed with)
notebooks: setup-test
	$(PY) scripts/run_notebooks.py

train-essay: setup
	$(VENV)/bin/deqnca train --preset essay --seed 0 --out runs/essay-seed0

train-equilibrium: setup
	$(VENV)/bin/deqnca train --preset equilibrium --seed 0 --out runs/equilibrium-seed0

bench: setup
	$(PY) benchmarks/mnist_speed.py --device cpu

clean:
	rm -rf $(VENV) out runs site-docs
