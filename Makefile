# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# ament_index must find the message packages installed as wheels inside the venv.
RUN := AMENT_PREFIX_PATH=$(abspath $(VENV)) PYTHONUNBUFFERED=1
PYTEST_ARGS ?=

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	@bash tools/check_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(RUN) $(VENV)/bin/scmpr demo

test: $(STAMP)
	$(RUN) $(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(RUN) $(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
