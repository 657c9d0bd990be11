# pqcall: `make test` and `make demo` are the two commands a new user needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast lint types bench demo clean

$(STAMP): pyproject.toml
	@echo "installing dependencies into $(VENV), about a minute (once)…"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

types: $(STAMP)
	$(VENV)/bin/mypy

# everything: CI runs this through .ci/run (with PostgreSQL, the PulseAudio card, Chromium, netns)
test: lint types
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest

# the quick lane while working: unit and in-process tests (markers: tests/conftest.py)
FAST_MARKERS := not slow and not e2e and not browser and not netns and not pulse
test-fast: lint types
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q -m "$(FAST_MARKERS)"

bench: $(STAMP)
	$(PY) -m pqcall.bench crypto

# a server and two phones on this machine; no sound card, loopback only (docs/cli.md)
demo: $(STAMP)
	$(PY) -m pqcall demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
