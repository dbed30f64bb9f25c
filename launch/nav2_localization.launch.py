"""map_server + localizer as Nav2 managed nodes, brought up by nav2_lifecycle_manager.

    ros2 launch scmpr_ros nav2_localization.launch.py map_file:=/maps/town.scmpr-map model:=/models/scmpr_nano.pt

localization.launch.py with autostart:=false (the nodes start unconfigured), plus a
nav2_lifecycle_manager that configures both (map_server first: it loads and validates the map; the
localizer loads the model) and then activates both.  Transitions by hand:
``ros2 lifecycle set /localizer deactivate``.  The manager's bond is off (bond_timeout 0): these rclpy
nodes do not run bondcpp.  Nav2's own map_server is also named map_server; in a stack that runs both,
put this launch file in a namespace.
"""

from launch_ros.actions import Node

from launch import LaunchDescription
from scmpr_ros.nodes.launch_common import (
    LOCALIZATION_ARGUMENTS,
    argument_value,
    declare_arguments,
    include_localization,
    passed_on,
)

#: localization.launch.py's arguments that this file declares too (same defaults) and passes on
PASSED_ON = (
    "map_file",
    "model",
    "image_topic",
    "camera_info_topic",
    "odom_topic",
    "device",
    "use_sim_time",
    "publish_initialpose",
    "params_file",
    "fastdds_profile",
)

#: this file's launch arguments (each with a description: test_launch_files.py checks)
ARGUMENTS = {
    **{name: LOCALIZATION_ARGUMENTS[name] for name in PASSED_ON},
    "lifecycle_autostart": ("true", "Whether nav2_lifecycle_manager configures and activates the nodes at start"),
}


def generate_launch_description() -> LaunchDescription:
    args = declare_arguments(ARGUMENTS)
    # the nodes start unconfigured (autostart false); the manager below brings them up
    nodes = include_localization({**passed_on(*PASSED_ON), "autostart": "false"})
    manager = Node(
        package="nav2_lifecycle_manager",
        executable="lifecycle_manager",
        name="lifecycle_manager_scmpr",
        output="screen",
        parameters=[
            {
                "node_names": ["map_server", "localizer"],  # bring-up order; names from localization.launch.py
                "autostart": argument_value("lifecycle_autostart", bool),
                "bond_timeout": 0.0,
                "use_sim_time": argument_value("use_sim_time", bool),
            }
        ],
    )
    return LaunchDescription(args + [nodes, manager])
