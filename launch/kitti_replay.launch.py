"""Replay a KITTI rosbag2 (from `scmpr kitti-to-bag`) into map_server + localizer and record the hypotheses.

    ros2 launch scmpr_ros kitti_replay.launch.py bag:=/data/kitti00_bag map_file:=/maps/kitti00.scmpr-map

bag_player publishes /clock, so every node runs on sim time.  With record:=DIR the hypotheses, scores
and best poses are recorded with `ros2 bag record` for `scmpr evaluate`-style scoring.  Without
launch_ros, `scmpr replay --bag B --map M --model X` runs the same nodes and params file.
bag_player, the nodes and the recorder get the shipped Fast DDS profile (config/fastdds_shm.xml), so
full-size images cross processes, unless the user set FASTDDS_DEFAULT_PROFILES_FILE or runs another RMW.
"""

import os

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
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
    params_default = PathJoinSubstitution([share, "config", "localization.params.yaml"])
    return [
        DeclareLaunchArgument("bag", description="rosbag2 directory written by `scmpr kitti-to-bag`"),
        DeclareLaunchArgument("map_file", description="Map file (.scmpr-map) of the same environment"),
        DeclareLaunchArgument(
            "model",
            default_value=PathJoinSubstitution([share, "models", "scmpr_nano.pt"]),
            description="Model checkpoint the map was built with",
        ),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate (1.0 = recorded timing)"),
        DeclareLaunchArgument("device", default_value="auto", description="Encoder device: auto, cpu or cuda"),
        DeclareLaunchArgument(
            "record",
            default_value="",
            description="Output directory for `ros2 bag record` of the hypotheses (empty: do not record)",
        ),
        DeclareLaunchArgument(
            "params_file", default_value=params_default, description="ROS parameters file for all nodes"
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
    localization = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "localization.launch.py"])),
        launch_arguments={
            "map_file": LaunchConfiguration("map_file"),
            "model": LaunchConfiguration("model"),
            "device": LaunchConfiguration("device"),
            "params_file": LaunchConfiguration("params_file"),
            "fastdds_profile": LaunchConfiguration("fastdds_profile"),
            "use_sim_time": "true",
        }.items(),
    )
    player = Node(
        package="scmpr_ros",
        executable="bag_player",
        name="bag_player",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "bag": ParameterValue(LaunchConfiguration("bag"), value_type=str),
                "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                "clock": True,
            },
        ],
    )
    recorder = ExecuteProcess(
        cmd=[
            "ros2",
            "bag",
            "record",
            "-o",
            LaunchConfiguration("record"),
            "/scmpr/hypotheses",
            "/scmpr/hypothesis_scores",
            "/scmpr/best_pose",
            "/ground_truth/odometry",
            "/diagnostics",
        ],
        output="screen",
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("record"), "' != ''"])),
    )
    return LaunchDescription(args + [OpaqueFunction(function=_fastdds_profile), localization, player, recorder])
