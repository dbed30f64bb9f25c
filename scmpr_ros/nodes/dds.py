"""The Fast DDS transport profile for full-size camera images between processes, and the start-up report.

Fast DDS's default shared-memory segment (512 kB) cannot carry a fragmented best-effort sample, so a
camera image of 1.4 MB (1241x376 rgb8) or more published by another process on the same host is
silently lost (measured: 0-6 of 40 delivered at 10 Hz; 620x188 arrives 40/40).  ``config/fastdds_shm.xml``
gives the shared-memory transport a 32 MB segment (plus UDPv4); it is the *publisher's* segment that
carries the sample, so the camera driver's process needs the profile too (README: set
FASTDDS_DEFAULT_PROFILES_FILE).  Our console scripts apply it before ``rclpy.init`` (executors.run_node_main)
and the launch files set it for every process they start, unless the user already chose a profile
(FASTDDS_DEFAULT_PROFILES_FILE, or the deprecated FASTRTPS_DEFAULT_PROFILES_FILE) or the RMW is not Fast DDS.
Fast DDS reads the variable once per process, when its first participant is created.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_FILE_NAME = "fastdds_shm.xml"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2.x name, still read (deprecated) by 3.x
PROFILE_ENV_VARS = (PROFILE_ENV, LEGACY_PROFILE_ENV)

_lock = threading.Lock()
_reported = False


def shipped_profile() -> Path:
    """config/fastdds_shm.xml of the source tree, or share/scmpr_ros/config/ of an installed package."""
    from scmpr_ros.config import default_config_dir

    return default_config_dir() / PROFILE_FILE_NAME


def rmw_implementation(environ: MutableMapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("RMW_IMPLEMENTATION", "").strip()


def is_fast_dds(environ: MutableMapping[str, str] | None = None) -> bool:
    """True for the default RMW (unset: rmw_fastrtps_cpp) and rmw_fastrtps_cpp / rmw_fastrtps_dynamic_cpp."""
    rmw = rmw_implementation(environ)
    return not rmw or rmw.startswith("rmw_fastrtps")


def user_profile(environ: MutableMapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of a profile the user chose already, or None."""
    env = os.environ if environ is None else environ
    for var in PROFILE_ENV_VARS:
        if env.get(var, "").strip():
            return var, env[var]
    return None


def profile_to_apply(environ: MutableMapping[str, str] | None = None, profile: Path | str | None = None) -> str | None:
    """The profile path to put in FASTDDS_DEFAULT_PROFILES_FILE, or None (another RMW, the user's own
    profile, or no profile file).  The launch files call this too."""
    if not is_fast_dds(environ) or user_profile(environ) is not None:
        return None
    if profile is not None and not str(profile).strip():  # '' (launch argument): keep the Fast DDS defaults
        return None
    path = Path(profile) if profile is not None else shipped_profile()
    return str(path) if path.is_file() else None


def apply_dds_profile(environ: MutableMapping[str, str] | None = None, profile: Path | str | None = None) -> str:
    """Set FASTDDS_DEFAULT_PROFILES_FILE to the shipped profile where profile_to_apply says so (call before
    rclpy.init); return one line saying which profile is in use."""
    env = os.environ if environ is None else environ
    path = profile_to_apply(env, profile)
    if path is not None:
        env[PROFILE_ENV] = path
    return describe_dds_profile(env)


def describe_dds_profile(environ: MutableMapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if not is_fast_dds(env):
        return f"DDS: RMW {rmw_implementation(env)}; no Fast DDS profile applied"
    chosen = user_profile(env)
    if chosen is None:
        return (
            f"DDS: Fast DDS built-in transports ({PROFILE_ENV} not set): camera images over 512 kB from other "
            f"processes may be lost; the publisher and this process need {shipped_profile()}"
        )
    var, value = chosen
    shipped = Path(value).expanduser().resolve() == shipped_profile().resolve()
    which = "the shipped shared-memory profile (32 MB segment + UDPv4)" if shipped else "a user profile"
    return f"DDS: Fast DDS with {which}, {var}={value}"


def runtime_report() -> list[str]:
    """Which rclpy and image conversion (cv_bridge or the numpy fallback) this process uses; the DDS profile."""
    import rclpy

    from scmpr_ros.msgs.conversions import IMAGE_BACKEND

    try:
        from importlib.metadata import version

        rclpy_version = version("rclpy")
    except Exception:  # noqa: BLE001 - no distribution metadata (source build): the path says enough
        rclpy_version = "?"
    bridge = sys.modules.get("cv_bridge")
    if IMAGE_BACKEND == "cv_bridge" and bridge is not None:
        images = f"cv_bridge from {getattr(bridge, '__file__', '?')}"
    else:
        images = "numpy fallback (cv_bridge not importable)"
    return [f"rclpy {rclpy_version} from {rclpy.__file__}; images: {images}", describe_dds_profile()]


def log_runtime_once(logger) -> None:
    """Log runtime_report() once per process (the first node that starts)."""
    global _reported
    with _lock:
        if _reported:
            return
        _reported = True
    for line in runtime_report():
        logger.info(line)
