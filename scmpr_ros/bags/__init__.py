"""rosbag2 reading and writing with rosbags (no rclpy): KITTI -> bag conversion and bag reading."""
