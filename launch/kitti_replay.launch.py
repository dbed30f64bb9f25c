"""Replay a KITTI rosbag2 (from `scmpr kitti-to-bag`) into map_server + localizer and record the hypotheses.

    ros2 launch scmpr_ros kitti_replay.launch.py bag:=/data/kitti00_bag map_file:=/maps/kitti00.scmpr-map

bag_player publishes /clock, so every node runs on sim time.  With record:=DIR the hypotheses, scores
and best poses are recorded with `ros2 bag record` for `scmpr evaluate`-style scoring.  Without
launch_ros, `scmpr replay --bag B --map M --model X` runs the same nodes and params file.
bag_player, the nodes and the recorder get the shipped Fast DDS profile (config/fastdds_shm.xml), so
full-size images cross processes, unless the user set FASTDDS_DEFAULT_PROFILES_FILE or runs another RMW.
"""

from launch.actions import ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression

from launch import LaunchDescription
from scmpr_ros.nodes.launch_common import (
    LOCALIZATION_ARGUMENTS,
    PARAMS_FILE,
    SHIPPED_MODEL,
    argument_values,
    declare_arguments,
    fastdds_profile,
    include_localization,
    package_node,
    passed_on,
)

#: this file's launch arguments (each with a description: test_launch_files.py checks)
ARGUMENTS = {
    "bag": (None, "rosbag2 directory written by `scmpr kitti-to-bag`"),
    "map_file": (None, "Map file (.scmpr-map) of the same environment"),
    "model": (SHIPPED_MODEL, "Model checkpoint the map was built with"),
    "rate": ("1.0", "Playback rate (1.0 = recorded timing)"),
    "device": ("auto", "Encoder device: auto, cpu or cuda"),
    "record": ("", "Output directory for `ros2 bag record` of the hypotheses (empty: do not record)"),
    "params_file": (PARAMS_FILE, "ROS parameters file for all nodes"),
    "fastdds_profile": LOCALIZATION_ARGUMENTS["fastdds_profile"],
}

#: what `ros2 bag record` records (record:=DIR)
RECORDED_TOPICS = [
    "/scmpr/hypotheses",
    "/scmpr/hypothesis_scores",
    "/scmpr/best_pose",
    "/ground_truth/odometry",
    "/diagnostics",
]


def generate_launch_description() -> LaunchDescription:
    args = declare_arguments(ARGUMENTS)
    localization = include_localization(
        {**passed_on("map_file", "model", "device", "params_file", "fastdds_profile"), "use_sim_time": "true"}
    )
    player = package_node("bag_player", {**argument_values(bag=str, rate=float), "clock": True})
    recorder = ExecuteProcess(
        cmd=["ros2", "bag", "record", "-o", LaunchConfiguration("record"), *RECORDED_TOPICS],
        output="screen",
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("record"), "' != ''"])),
    )
    return LaunchDescription(args + [fastdds_profile(), localization, player, recorder])
