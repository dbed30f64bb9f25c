"""rclpy from the wheels works: one publish/subscribe round trip over loopback DDS."""

import time

import pytest

rclpy = pytest.importorskip("rclpy")
from std_msgs.msg import String  # noqa: E402

pytestmark = pytest.mark.ros


def test_publish_subscribe_round_trip() -> None:
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        pub_node = rclpy.create_node("smoke_pub", context=context)
        sub_node = rclpy.create_node("smoke_sub", context=context)
        received: list[str] = []
        sub_node.create_subscription(String, "/scmpr_smoke", lambda m: received.append(m.data), 10)
        pub = pub_node.create_publisher(String, "/scmpr_smoke", 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            pub.publish(String(data="hello"))
            executor.spin_once(timeout_sec=0.1)
        assert received and received[0] == "hello"
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
