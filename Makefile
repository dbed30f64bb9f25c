# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# ROS 2 Python: a sourced ROS 2 (ROS_DISTRO set and rclpy importable by $(PYTHON)) is used as it is;
# otherwise rclpy and the messages come from the ros-kilted-* wheels of requirements-ros.txt.
SYSTEM_ROS := $(shell [ -n "$$ROS_DISTRO" ] && $(PYTHON) -c 'import rclpy' >/dev/null 2>&1 && echo yes)
ROS_SOURCE := $(if $(SYSTEM_ROS),system,wheels)
# with a system ROS 2 the venv also sees the system's Python packages (the ones rclpy itself imports)
SYSTEM_SITE := $(if $(SYSTEM_ROS),true,false)
# one stamp per ROS source, so sourcing (or leaving) a ROS 2 installs what the other case needs
STAMP := $(VENV)/.installed-$(ROS_SOURCE)
# ament_index must find the message packages installed as wheels inside the venv (a sourced ROS 2
# keeps its own prefixes after it).
RUN := AMENT_PREFIX_PATH=$(abspath $(VENV))$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH} PYTHONUNBUFFERED=1
PYTEST_ARGS ?=
LINT_PATHS ?= scmpr_ros test launch

.PHONY: install demo test test-all lint clean

install: $(STAMP)

# The venv is created once; later runs only install what changed (pip skips what is already there).
$(STAMP): requirements.txt requirements-ros.txt setup.py
	@bash tools/check_system_deps.sh
	@if [ ! -x $(PY) ]; then \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip; \
	fi
	@sed -i 's/^include-system-site-packages = .*/include-system-site-packages = $(SYSTEM_SITE)/' $(VENV)/pyvenv.cfg
	$(PY) -m pip install -q -r requirements.txt
ifeq ($(ROS_SOURCE),wheels)
	$(PY) -m pip install -q -r requirements-ros.txt
else
	@echo "using the sourced ROS 2 $$ROS_DISTRO for rclpy and messages (requirements-ros.txt not installed)"
endif
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed $(VENV)/.installed-*
	@touch $(STAMP)

demo: $(STAMP)
	$(RUN) $(VENV)/bin/scmpr demo

# CI (.ci/run) calls exactly `make test`: lint first, then the tests.
test: $(STAMP) lint
	$(RUN) $(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(RUN) $(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

clean:
	rm -rf $(VENV) build *.egg-info
