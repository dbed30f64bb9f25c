"""The shipped Fast DDS profile (config/fastdds_shm.xml) and when the nodes apply it (scmpr_ros/nodes/dds.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from scmpr_ros.nodes import dds

REPO = Path(__file__).resolve().parent.parent
NS = {"d": "http://www.eprosima.com"}


def test_shipped_profile_gives_shared_memory_a_32_mb_segment_plus_udp():
    path = dds.shipped_profile()
    assert path == REPO / "config" / "fastdds_shm.xml" and path.is_file()
    root = ET.parse(path).getroot()
    transports = {
        t.find("d:transport_id", NS).text: t for t in root.iterfind("d:profiles/d:transport_descriptors/*", NS)
    }
    kinds = {tid: t.find("d:type", NS).text for tid, t in transports.items()}
    assert sorted(kinds.values()) == ["SHM", "UDPv4"]
    shm = next(t for t in transports.values() if t.find("d:type", NS).text == "SHM")
    assert int(shm.find("d:segment_size", NS).text) == 32 * 1024 * 1024
    (participant,) = root.iterfind("d:profiles/d:participant", NS)
    assert participant.get("is_default_profile") == "true"  # rmw_fastrtps creates participants with the default
    rtps = participant.find("d:rtps", NS)
    assert rtps.find("d:useBuiltinTransports", NS).text == "false"
    assert [e.text for e in rtps.iterfind("d:userTransports/d:transport_id", NS)] == list(transports)


def test_applied_only_for_fast_dds_and_only_when_the_user_chose_none():
    shipped = str(dds.shipped_profile())
    env: dict[str, str] = {}
    assert "shipped shared-memory profile" in dds.apply_dds_profile(env)
    assert env == {dds.PROFILE_ENV: shipped}
    for rmw in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        env = {"RMW_IMPLEMENTATION": rmw}
        dds.apply_dds_profile(env)
        assert env[dds.PROFILE_ENV] == shipped
    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert "rmw_cyclonedds_cpp" in dds.apply_dds_profile(env) and dds.PROFILE_ENV not in env
    for var in dds.PROFILE_ENV_VARS:
        env = {var: "/etc/mine.xml"}
        line = dds.apply_dds_profile(env)
        assert env == {var: "/etc/mine.xml"}, "a user's profile is never replaced"
        assert "user profile" in line and f"{var}=/etc/mine.xml" in line
    env = {}
    assert "built-in transports" in dds.apply_dds_profile(env, profile="") and env == {}
    assert dds.profile_to_apply({}, profile="/nonexistent/profile.xml") is None


def test_runtime_report_names_rclpy_and_the_image_conversion():
    pytest.importorskip("rclpy")
    line, profile = dds.runtime_report()
    assert line.startswith("rclpy ") and "rclpy/__init__.py" in line
    assert "images: cv_bridge from " in line or "images: numpy fallback" in line
    assert profile.startswith("DDS: ")


@pytest.mark.ros
def test_console_script_applies_the_profile_and_logs_it():
    """map_server's main (run_node_main): the profile is set before rclpy.init and logged with rclpy and
    cv_bridge; a configure that fails at autostart exits 2 with the reason."""
    pytest.importorskip("rclpy")
    env = {k: v for k, v in os.environ.items() if k not in dds.PROFILE_ENV_VARS and k != "RMW_IMPLEMENTATION"}
    cmd = [sys.executable, "-m", "scmpr_ros.nodes.map_server", "--ros-args", "-p", "map_file:=/nonexistent.map"]
    cmd += ["-r", "__ns:=/scmpr_dds_test"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "map_server: configure failed: map load failed: map_file /nonexistent.map does not exist" in out
    assert f"DDS: Fast DDS with the shipped shared-memory profile (32 MB segment + UDPv4), {dds.PROFILE_ENV}=" in out
    assert "rclpy " in out and "images: " in out
