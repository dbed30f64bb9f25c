"""scmpr_ros.nodes: the ROS 2 surface (the only package that imports rclpy).

map_server.py, localizer.py, bag_player.py: one node each with ``main()`` (console scripts);
replay.py runs them in one process for ``scmpr replay | demo | benchmark ros``.  conversions.py,
transforms.py and map_transport.py import no rclpy, so scmpr_ros.bags can use them.
"""
