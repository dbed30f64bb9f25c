"""Shared pytest fixtures. Each block is owned by the part that needs it; keep blocks delimited."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# --- ROS 2 / DDS isolation ---------------------------------------------------------------
# One ROS_DOMAIN_ID per test run (derived from the pid, within the valid 1..101 range) and
# discovery limited to this host, so parallel runs and other machines never see our topics.
def _configure_ros_environment() -> None:
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    venv = Path(os.sys.prefix)
    if "AMENT_PREFIX_PATH" not in os.environ and (venv / "share" / "ament_index").is_dir():
        os.environ["AMENT_PREFIX_PATH"] = str(venv)


_configure_ros_environment()
