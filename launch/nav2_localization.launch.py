"""map_server + localizer as Nav2 managed nodes, brought up by nav2_lifecycle_manager.

    ros2 launch scmpr_ros nav2_localization.launch.py map_file:=/maps/town.scmpr-map model:=/models/scmpr_nano.pt

localization.launch.py with autostart:=false (the nodes start unconfigured), plus a
nav2_lifecycle_manager that configures both (map_server first: it loads and validates the map; the
localizer loads the model) and then activates both.  Transitions by hand:
``ros2 lifecycle set /localizer deactivate``.  The manager's bond is off (bond_timeout 0): these rclpy
nodes do not run bondcpp.  Nav2's own map_server is also named map_server; in a stack that runs both,
put this launch file in a namespace.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


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
            "fastdds_profile",
            default_value=PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
            description="Fast DDS XML profile for these processes ('' = Fast DDS defaults); ignored when "
            "FASTDDS_DEFAULT_PROFILES_FILE is set or the RMW is not Fast DDS",
        ),
        DeclareLaunchArgument(
            "lifecycle_autostart",
            default_value="true",
            description="Whether nav2_lifecycle_manager configures and activates the nodes at start",
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("scmpr_ros")
    args = _arguments(share)
    nodes = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "localization.launch.py"])),
        launch_arguments={
            "map_file": LaunchConfiguration("map_file"),
            "model": LaunchConfiguration("model"),
            "image_topic": LaunchConfiguration("image_topic"),
            "camera_info_topic": LaunchConfiguration("camera_info_topic"),
            "device": LaunchConfiguration("device"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
            "publish_initialpose": LaunchConfiguration("publish_initialpose"),
            "params_file": LaunchConfiguration("params_file"),
            "fastdds_profile": LaunchConfiguration("fastdds_profile"),
            "autostart": "false",  # the nodes start unconfigured; the manager below brings them up
        }.items(),
    )
    manager = Node(
        package="nav2_lifecycle_manager",
        executable="lifecycle_manager",
        name="lifecycle_manager_scmpr",
        output="screen",
        parameters=[
            {
                "node_names": ["map_server", "localizer"],  # bring-up order; names from localization.launch.py
                "autostart": ParameterValue(LaunchConfiguration("lifecycle_autostart"), value_type=bool),
                "bond_timeout": 0.0,
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            }
        ],
    )
    return LaunchDescription(args + [nodes, manager])
