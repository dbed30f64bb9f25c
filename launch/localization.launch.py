"""map_server + localizer with the package's params file (ros2 launch scmpr_ros localization.launch.py).

    ros2 launch scmpr_ros localization.launch.py map_file:=/maps/town.scmpr-map model:=/models/scmpr_nano.pt

The same nodes and params file run without launch_ros through `scmpr replay` (loopback DDS).
Both are lifecycle nodes; with autostart:=false they wait for a lifecycle manager
(nav2_localization.launch.py).  Every process started here gets the shipped Fast DDS profile
(config/fastdds_shm.xml: full-size camera images over shared memory) unless FASTDDS_DEFAULT_PROFILES_FILE
or FASTRTPS_DEFAULT_PROFILES_FILE is already set or RMW_IMPLEMENTATION is not Fast DDS; the camera
driver needs the same profile (README).
"""

from launch import LaunchDescription
from scmpr_ros.nodes.launch_common import (
    LOCALIZATION_ARGUMENTS,
    argument_values,
    declare_arguments,
    fastdds_profile,
    package_node,
)


def generate_launch_description() -> LaunchDescription:
    args = declare_arguments(LOCALIZATION_ARGUMENTS)
    map_server = package_node("map_server", argument_values(map_file=str, autostart=bool, use_sim_time=bool))
    localizer = package_node(
        "localizer",
        argument_values(
            model=str,
            image_topic=str,
            camera_info_topic=str,
            odom_topic=str,
            device=str,
            publish_initialpose=bool,
            autostart=bool,
            use_sim_time=bool,
        ),
    )
    return LaunchDescription(args + [fastdds_profile(), map_server, localizer])
