"""map_server + localizer with the package's params file (ros2 launch scmpr_ros localization.launch.py).

    ros2 launch scmpr_ros localization.launch.py map_file:=/maps/town.scmpr-map model:=/models/scmpr_nano.pt

The same nodes and params file run without launch_ros through `scmpr replay` (loopback DDS).
Both are lifecycle nodes; with autostart:=false they wait for a lifecycle manager
(nav2_localization.launch.py).  Every process started here gets the shipped Fast DDS profile
(config/fastdds_shm.xml: full-size camera images over shared memory) unless FASTDDS_DEFAULT_PROFILES_FILE
or FASTRTPS_DEFAULT_PROFILES_FILE is already set or RMW_IMPLEMENTATION is not Fast DDS; the camera
driver needs the same profile (README).
"""

import os

from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _fastdds_profile(context):
    """FASTDDS_DEFAULT_PROFILES_FILE for the processes started after this, where scmpr_ros.nodes.dds says so."""
    from scmpr_ros.nodes.dds import PROFILE_ENV, describe_dds_profile, profile_to_apply

    path = profile_to_apply(os.environ, LaunchConfiguration("fastdds_profile").perform(context))
    if path is None:
        return [LogInfo(msg=describe_dds_profile(os.environ))]
    return [
        SetEnvironmentVariable(PROFILE_ENV, path),
        LogInfo(msg=describe_dds_profile({**os.environ, PROFILE_ENV: path})),
    ]


def _arguments(share) -> list:
    """The launch arguments (each with a description: test_launch_files.py checks)."""
    return [
        DeclareLaunchArgument(
            "map_file", description="Map file (.scmpr-map) built with `scmpr build-map`; served by map_server"
        ),
        DeclareLaunchArgument(
            "model",
            default_value=PathJoinSubstitution([share, "models", "scmpr_nano.pt"]),
            description="Model checkpoint the map was built with (default: the shipped nano model)",
        ),
        DeclareLaunchArgument(
            "image_topic",
            default_value="/camera/image_raw",
            description="sensor_msgs/Image topic to localize (rgb8, bgr8, rgba8, bgra8 or mono8)",
        ),
        DeclareLaunchArgument(
            "camera_info_topic",
            default_value="/camera/camera_info",
            description="sensor_msgs/CameraInfo of that camera",
        ),
        DeclareLaunchArgument(
            "odom_topic",
            default_value="",
            description="nav_msgs/Odometry for the localization filter's motion; empty = image only",
        ),
        DeclareLaunchArgument(
            "device", default_value="auto", description="Encoder device: auto (CUDA when present), cpu or cuda"
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (true when replaying a bag with clock)"
        ),
        DeclareLaunchArgument(
            "publish_initialpose",
            default_value="false",
            description="Publish a confident, consistent result once on /initialpose for Nav2 AMCL",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "localization.params.yaml"]),
            description="ROS parameters file for map_server and localizer",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="Configure and activate the lifecycle nodes at start (false: a lifecycle manager does)",
        ),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
            description="Fast DDS XML profile for these processes ('' = Fast DDS defaults); ignored when "
            "FASTDDS_DEFAULT_PROFILES_FILE is set or the RMW is not Fast DDS",
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("scmpr_ros")
    args = _arguments(share)
    params = LaunchConfiguration("params_file")
    sim = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    autostart = ParameterValue(LaunchConfiguration("autostart"), value_type=bool)
    map_server = Node(
        package="scmpr_ros",
        executable="map_server",
        name="map_server",
        output="screen",
        parameters=[
            params,
            {
                "map_file": ParameterValue(LaunchConfiguration("map_file"), value_type=str),
                "autostart": autostart,
                "use_sim_time": sim,
            },
        ],
    )
    localizer = Node(
        package="scmpr_ros",
        executable="localizer",
        name="localizer",
        output="screen",
        parameters=[
            params,
            {
                "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "image_topic": ParameterValue(LaunchConfiguration("image_topic"), value_type=str),
                "camera_info_topic": ParameterValue(LaunchConfiguration("camera_info_topic"), value_type=str),
                "odom_topic": ParameterValue(LaunchConfiguration("odom_topic"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "publish_initialpose": ParameterValue(LaunchConfiguration("publish_initialpose"), value_type=bool),
                "autostart": autostart,
                "use_sim_time": sim,
            },
        ],
    )
    return LaunchDescription(args + [OpaqueFunction(function=_fastdds_profile), map_server, localizer])
