"""The pieces of launch/*.launch.py that more than one launch file uses, each once.

The launch files import this module when ``ros2 launch`` loads them (it imports launch and launch_ros,
so it is the one module of the package that needs them; nothing else imports it).  Each launch file
keeps what is its own: which nodes it starts, what it includes, its own arguments.  Here live:

- ``LOCALIZATION_ARGUMENTS``: the launch arguments of localization.launch.py, which
  nav2_localization.launch.py declares again (same defaults and descriptions) and passes on;
- ``declare_arguments``: DeclareLaunchArgument from such a table;
- ``package_node`` / ``argument_values``: a node of this package, named as its executable, with the
  params file and then ROS parameters taken from the launch arguments of the same name;
- ``include_localization``: localization.launch.py included with some arguments passed on;
- ``fastdds_profile``: the action that sets the shipped Fast DDS profile (scmpr_ros.nodes.dds) for the
  processes started after it.

test/test_launch_files.py runs the launch files against stand-ins for launch and launch_ros.
"""

from __future__ import annotations

import os

from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from scmpr_ros.nodes.dds import PROFILE_ENV, describe_dds_profile, profile_to_apply

PACKAGE = "scmpr_ros"

#: a launch argument: (default, description); default None = required, a tuple = a path in the package's share
Argument = tuple[str | tuple[str, ...] | None, str]

SHIPPED_MODEL = ("models", "scmpr_nano.pt")
PARAMS_FILE = ("config", "localization.params.yaml")

#: localization.launch.py's arguments (each with a description: test_launch_files.py checks)
LOCALIZATION_ARGUMENTS: dict[str, Argument] = {
    "map_file": (None, "Map file (.scmpr-map) built with `scmpr build-map`; served by map_server"),
    "model": (SHIPPED_MODEL, "Model checkpoint the map was built with (default: the shipped nano model)"),
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image topic to localize (rgb8, bgr8, rgba8, bgra8 or mono8)"),
    "camera_info_topic": ("/camera/camera_info", "sensor_msgs/CameraInfo of that camera"),
    "odom_topic": ("", "nav_msgs/Odometry for the localization filter's motion; empty = image only"),
    "device": ("auto", "Encoder device: auto (CUDA when present), cpu or cuda"),
    "use_sim_time": ("false", "Use /clock (true when replaying a bag with clock)"),
    "publish_initialpose": ("false", "Publish a confident, consistent result once on /initialpose for Nav2 AMCL"),
    "params_file": (PARAMS_FILE, "ROS parameters file for map_server and localizer"),
    "autostart": ("true", "Configure and activate the lifecycle nodes at start (false: a lifecycle manager does)"),
    "fastdds_profile": (
        ("config", "fastdds_shm.xml"),
        "Fast DDS XML profile for these processes ('' = Fast DDS defaults); ignored when "
        "FASTDDS_DEFAULT_PROFILES_FILE is set or the RMW is not Fast DDS",
    ),
}


def declare_arguments(arguments: dict[str, Argument]) -> list[DeclareLaunchArgument]:
    """One DeclareLaunchArgument per table entry, in the table's order."""
    share = FindPackageShare(PACKAGE)
    declared = []
    for name, (default, description) in arguments.items():
        if default is None:
            declared.append(DeclareLaunchArgument(name, description=description))
            continue
        if isinstance(default, tuple):
            default = PathJoinSubstitution([share, *default])
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return declared


def argument_value(name: str, value_type: type) -> ParameterValue:
    """The launch argument `name` as a ROS parameter value of `value_type`."""
    return ParameterValue(LaunchConfiguration(name), value_type=value_type)


def argument_values(**value_types: type) -> dict[str, ParameterValue]:
    """ROS parameters set from the launch arguments of the same names: ``map_file=str`` -> {"map_file": ...}."""
    return {name: argument_value(name, value_type) for name, value_type in value_types.items()}


def package_node(executable: str, parameters: dict) -> Node:
    """A node of this package, named as its executable: the params_file argument, then `parameters`."""
    return Node(
        package=PACKAGE,
        executable=executable,
        name=executable,
        output="screen",
        parameters=[LaunchConfiguration("params_file"), parameters],
    )


def passed_on(*names: str) -> dict[str, LaunchConfiguration]:
    """Launch arguments handed to an included launch file under the same names."""
    return {name: LaunchConfiguration(name) for name in names}


def include_localization(launch_arguments: dict) -> IncludeLaunchDescription:
    """localization.launch.py (map_server + localizer) of the installed package, with `launch_arguments`."""
    path = PathJoinSubstitution([FindPackageShare(PACKAGE), "launch", "localization.launch.py"])
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=launch_arguments.items())


def _set_fastdds_profile(context) -> list:
    """FASTDDS_DEFAULT_PROFILES_FILE for the processes started after this, where scmpr_ros.nodes.dds says so."""
    path = profile_to_apply(os.environ, LaunchConfiguration("fastdds_profile").perform(context))
    if path is None:
        return [LogInfo(msg=describe_dds_profile(os.environ))]
    return [
        SetEnvironmentVariable(PROFILE_ENV, path),
        LogInfo(msg=describe_dds_profile({**os.environ, PROFILE_ENV: path})),
    ]


def fastdds_profile() -> OpaqueFunction:
    """Put this before the processes of a launch file that declares the fastdds_profile argument."""
    return OpaqueFunction(function=_set_fastdds_profile)
