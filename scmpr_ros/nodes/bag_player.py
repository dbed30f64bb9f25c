"""bag_player node: replay a rosbag2 (sqlite3 | mcap, read with rosbags) without rosbag2_py or `ros2 bag`.

Messages are published as the CDR bytes stored in the bag (no re-serialisation) at wall time
t_wall = t_start + (t_bag - t_bag0) / rate.  With ``clock`` true, rosgraph_msgs/Clock carries the
bag time (t_bag0 + elapsed_wall * rate) at ``clock_frequency`` Hz and before every message, for
nodes with use_sim_time.  Topics whose message package is not importable here (e.g. tf2_msgs
without a ROS install) are skipped with a warning.  Topics recorded with transient-local QoS are
republished latched.  With ``loop``, pass k >= 1 shifts /clock and the header stamps of messages that
start with a std_msgs/Header by k x (bag span + 1 s), patched in the CDR bytes, so stamps stay unique
and increasing (benchmarks key results on them).  Parameters: bag, rate, clock, clock_frequency,
topics, wait_for_topics, min_subscribers, wait_timeout_s, start_delay_s, loop.
"""

from __future__ import annotations

import importlib
import struct
import sys
import threading
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from scmpr_ros.bags.reader import BagError, bag_info, iter_raw
from scmpr_ros.errors import ScmprError
from scmpr_ros.nodes.qos import LATCHED_QOS

PLAYBACK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


#: ROS parameters of bag_player and their defaults
PARAMETERS = {
    "bag": "",
    "rate": 1.0,
    "clock": False,
    "clock_frequency": 100.0,
    "topics": [""],  # empty entries are ignored; no topic given = all topics
    "wait_for_topics": [""],  # start once each has min_subscribers subscribers (or after wait_timeout_s)
    "min_subscribers": 1,
    "wait_timeout_s": 10.0,
    "start_delay_s": 0.0,
    "loop": False,
}


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class, or None when its package is missing."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        return None
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        return None


def shift_header_stamp(raw: bytes, offset_ns: int) -> bytes:
    """CDR bytes of a message whose first field is std_msgs/Header, with header.stamp moved by offset_ns."""
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        raise ScmprError("not a plain CDR message (unknown encapsulation); cannot shift its stamp")
    fmt = "<iI" if raw[1] == 1 else ">iI"
    sec, nsec = struct.unpack_from(fmt, raw, 4)
    sec2, nsec2 = divmod(sec * 1_000_000_000 + nsec + int(offset_ns), 1_000_000_000)
    out = bytearray(raw)
    struct.pack_into(fmt, out, 4, sec2, nsec2)
    return bytes(out)


def starts_with_header(cls) -> bool:
    fields = list(cls.get_fields_and_field_types().values())
    return bool(fields) and fields[0] == "std_msgs/Header"


class BagPlayer(Node):
    def __init__(self, node_name: str = "bag_player", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        self.bag = str(g("bag"))
        self.rate = float(g("rate"))
        if not self.bag:
            raise ScmprError("parameter bag is empty; give a rosbag2 directory (e.g. from `scmpr kitti-to-bag`)")
        if not self.rate > 0:
            raise ScmprError(f"parameter rate={self.rate} must be > 0")
        self.info = bag_info(self.bag)
        wanted = [t for t in g("topics") if t]
        unknown = [t for t in wanted if t not in self.info.topics]
        if unknown:
            raise BagError(f"{self.bag}: topics {unknown} are not in the bag (it has {sorted(self.info.topics)})")
        self.topics = wanted or sorted(self.info.topics)
        self.clock = bool(g("clock"))
        self.clock_period = 1.0 / max(1e-3, float(g("clock_frequency")))
        self.wait_for = [t for t in g("wait_for_topics") if t]
        self.min_subscribers = max(1, int(g("min_subscribers")))
        self.wait_timeout = float(g("wait_timeout_s"))
        self.start_delay = float(g("start_delay_s"))
        self.loop = bool(g("loop"))
        latched_topics = self._latched_topics()
        self.pubs = {}
        self.stamped: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.loop_offset_ns = (self.info.end_ns - self.info.start_ns) + 1_000_000_000
        for topic in self.topics:
            msgtype = self.info.topics[topic].msgtype
            cls = message_class(msgtype)
            if cls is None:
                self.skipped[topic] = msgtype
                self.get_logger().warning(f"{topic}: message type {msgtype} is not importable here; not replayed")
                continue
            self.pubs[topic] = self.create_publisher(
                cls, topic, LATCHED_QOS if topic in latched_topics else PLAYBACK_QOS
            )
            if starts_with_header(cls):
                self.stamped.add(topic)
        self.clock_pub = None
        if self.clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.published = 0
        self.published_per_topic = dict.fromkeys(self.pubs, 0)
        self.done = threading.Event()
        self._stop = threading.Event()
        self.first_publish_wall: float | None = None
        self.last_publish_wall: float | None = None
        self._last_clock = 0
        self.clock_published = 0
        self._thread = threading.Thread(target=self._play, name="scmpr_bag_player", daemon=True)
        self._thread.start()

    def _latched_topics(self) -> set[str]:
        from rosbags.rosbag2 import Reader

        out = set()
        with Reader(self.bag) as reader:
            for c in reader.connections:
                for q in getattr(c.ext, "offered_qos_profiles", []) or []:
                    if getattr(q.durability, "name", "") == "TRANSIENT_LOCAL":
                        out.add(c.topic)
        return out

    # ---------------------------------------------------------------------------------- play
    def _sleep_until(self, target_wall: float, t_bag0: int, t_start: float, target_bag: int) -> bool:
        """Sleep until ``target_wall`` publishing /clock (never past ``target_bag``); False if stopped."""
        while True:
            now = time.monotonic()
            if self._stop.is_set():
                return False
            if now >= target_wall:
                return True
            step = min(target_wall - now, self.clock_period if self.clock_pub else 0.05)
            time.sleep(step)
            if self.clock_pub is not None:
                self._publish_clock(min(target_bag, t_bag0 + int((time.monotonic() - t_start) * self.rate * 1e9)))

    def _publish_clock(self, t_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        t_ns = max(int(t_ns), self._last_clock)  # /clock never runs backwards
        self._last_clock = t_ns
        m = Clock()
        m.clock.sec, m.clock.nanosec = divmod(max(0, int(t_ns)), 1_000_000_000)
        self.clock_pub.publish(m)
        self.clock_published += 1

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.wait_timeout
        for topic in self.wait_for:
            pub = self.pubs.get(topic)
            if pub is None:
                self.get_logger().warning(f"wait_for_topics: {topic} is not replayed; not waiting for it")
                continue
            while (
                pub.get_subscription_count() < self.min_subscribers
                and time.monotonic() < deadline
                and not self._stop.is_set()
            ):
                time.sleep(0.02)
            if pub.get_subscription_count() < self.min_subscribers:
                self.get_logger().warning(
                    f"{pub.get_subscription_count()} subscribers on {topic} after "
                    f"{self.wait_timeout:.1f} s (waiting for {self.min_subscribers}); starting anyway"
                )

    def _play(self) -> None:
        try:
            self._wait_for_subscribers()
            if self.start_delay > 0 and self._stop.wait(self.start_delay):
                return
            replay = [t for t in self.topics if t in self.pubs]
            k = 0
            while not self._stop.is_set():
                t_start = time.monotonic()
                t_bag0 = None
                shift = k * self.loop_offset_ns
                for topic, _type, t_ns, raw in iter_raw(self.bag, replay):
                    if t_bag0 is None:
                        t_bag0 = t_ns
                    if not self._sleep_until(
                        t_start + (t_ns - t_bag0) / 1e9 / self.rate, t_bag0 + shift, t_start, t_ns + shift
                    ):
                        return
                    if self.clock_pub is not None:
                        self._publish_clock(t_ns + shift)
                    if shift and topic in self.stamped:
                        raw = shift_header_stamp(raw, shift)
                    self.pubs[topic].publish(raw)
                    self.last_publish_wall = time.monotonic()
                    if self.first_publish_wall is None:
                        self.first_publish_wall = self.last_publish_wall
                    self.published += 1
                    self.published_per_topic[topic] += 1
                if not self.loop:
                    break
                k += 1
            self.get_logger().info(f"finished {self.bag}: {self.published} messages")
        except Exception as exc:  # noqa: BLE001 - report and end playback
            self.get_logger().error(f"playback failed: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def stop(self) -> None:
        """End playback early (the player then reports done)."""
        self._stop.set()

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    from scmpr_ros.nodes.executors import run_node_main

    return run_node_main("bag_player", BagPlayer, args, linger_s=0.5)


if __name__ == "__main__":
    sys.exit(main())
