"""bag_player over loopback DDS: original timing x rate, stamps and payload intact, /clock, skipped types."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from ros_helpers import Spinner, ros_context, unique_namespace, wait_for  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from scmpr_ros.bags.reader import BagError, bag_info  # noqa: E402
from scmpr_ros.msgs.conversions import image_fields, image_to_rgb, ns_to_sec_nanosec  # noqa: E402
from scmpr_ros.nodes.bag_player import PLAYBACK_QOS, BagPlayer  # noqa: E402

pytestmark = pytest.mark.ros

T0 = 1_000_000_000_000  # bag start (ns)
PERIOD = 100_000_000  # 10 Hz


def write_bag(path, ns: str, n: int = 10, storage: str = "sqlite3"):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as w:
        ci = w.add_connection(f"{ns}/image", "sensor_msgs/msg/Image", typestore=ts)
        cs = w.add_connection(f"{ns}/note", "std_msgs/msg/String", typestore=ts)
        ct = w.add_connection(f"{ns}/tf", "tf2_msgs/msg/TFMessage", typestore=ts)
        for i in range(n):
            t = T0 + i * PERIOD
            sec, nsec = ns_to_sec_nanosec(t)
            img = np.full((4, 5, 3), i, np.uint8)
            msg = T["sensor_msgs/msg/Image"](
                header=T["std_msgs/msg/Header"](
                    stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id="camera"
                ),
                **image_fields(img),
            )
            w.write(ci, t, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            w.write(cs, t, ts.serialize_cdr(T["std_msgs/msg/String"](data=f"n{i}"), "std_msgs/msg/String"))
            w.write(ct, t, ts.serialize_cdr(T["tf2_msgs/msg/TFMessage"](transforms=[]), "tf2_msgs/msg/TFMessage"))


# These tests check the player (timing, payload, stamps), so the sink subscribes reliably: a best-effort
# reader (the localizer's sensor QoS) may drop samples in transport, and did (7 of 10 images once on an
# idle machine, the first of 10 once under load).  wait_for_topics only sees the publisher side of a
# match; start_delay_s gives the reader side time to match too, as `ros2 bag play --delay` does.
SETTLE = rclpy.parameter.Parameter("start_delay_s", value=0.5)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_player_keeps_timing_times_rate_and_payload(tmp_path, storage):
    ns = unique_namespace()
    bag = tmp_path / "bag"
    write_bag(bag, ns, storage=storage)
    info = bag_info(bag)
    assert info.storage == storage and info.topics[f"{ns}/image"].count == 10
    with ros_context() as ctx:
        spin = Spinner(ctx)
        try:
            sink = spin.add(Node("sink", context=ctx, namespace=ns))
            got: list[tuple[float, int, int]] = []
            clocks: list[int] = []
            notes: list[str] = []
            sink.create_subscription(
                Image,
                f"{ns}/image",
                lambda m: got.append(
                    (
                        time.monotonic(),
                        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                        int(image_to_rgb(m, min_size=None)[0, 0, 0]),
                    )
                ),
                PLAYBACK_QOS,
            )
            sink.create_subscription(String, f"{ns}/note", lambda m: notes.append(m.data), 10)
            sink.create_subscription(
                Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec), 10
            )
            rate = 0.5  # slower than recorded: scheduling delays can only lengthen a playback, never shorten it
            player = spin.add(
                BagPlayer(
                    context=ctx,
                    namespace=ns,
                    parameter_overrides=[
                        rclpy.parameter.Parameter("bag", value=str(bag)),
                        rclpy.parameter.Parameter("rate", value=rate),
                        rclpy.parameter.Parameter("clock", value=True),
                        rclpy.parameter.Parameter("wait_for_topics", value=[f"{ns}/image", f"{ns}/note"]),
                        SETTLE,
                    ],
                )
            )
            assert player.skipped == {f"{ns}/tf": "tf2_msgs/msg/TFMessage"}
            assert wait_for(player.done.is_set, 15.0)
            assert wait_for(lambda: len(got) == 10 and len(notes) == 10, 5.0), (len(got), len(notes))
        finally:
            spin.close()
    stamps = [g[1] for g in got]
    assert stamps == [T0 + i * PERIOD for i in range(10)]
    assert [g[2] for g in got] == list(range(10))
    assert notes == [f"n{i}" for i in range(10)]
    span = got[-1][0] - got[0][0]
    expected = 9 * PERIOD / 1e9 / rate  # 1.8 s; at rate 1 it would be 0.9 s
    # The player sleeps until each message's absolute time, so a late first message shortens the span by
    # its delay and later delays lengthen it (the subscriber's or the player thread's scheduling on 2 busy
    # cores: up to +0.9 s seen when a second player ran in the same test process, also before session 3).
    # The bounds keep 10 % below (a player ignoring the rate plays in 0.9 s) and are loose above.
    played = player.last_publish_wall - player.first_publish_wall
    assert 0.9 * expected < played < expected + 1.0, played
    assert 0.9 * expected < span < expected + 1.5, span
    assert clocks and all(b >= a for a, b in zip(clocks, clocks[1:]))
    assert clocks[0] >= T0 and clocks[-1] <= T0 + 9 * PERIOD + 50_000_000
    # the player ticks /clock at 100 Hz over ~0.45 s plus once per message; a subscriber that stalls may
    # miss ticks (KEEP_LAST 10 at 100 Hz), so the count is the player's, the values are the subscriber's
    assert player.clock_published >= 20 and len(clocks) <= player.clock_published


def test_player_refuses_missing_bag_and_unknown_topics(tmp_path):
    ns = unique_namespace()
    write_bag(tmp_path / "bag", ns, n=2)
    with ros_context() as ctx:
        with pytest.raises(BagError, match="not a rosbag2 directory"):
            BagPlayer(context=ctx, parameter_overrides=[rclpy.parameter.Parameter("bag", value=str(tmp_path / "nope"))])
        with pytest.raises(BagError, match="not in the bag"):
            BagPlayer(
                context=ctx,
                parameter_overrides=[
                    rclpy.parameter.Parameter("bag", value=str(tmp_path / "bag")),
                    rclpy.parameter.Parameter("topics", value=["/nope"]),
                ],
            )


def test_loop_shifts_header_stamps_so_they_stay_unique(tmp_path):
    ns = unique_namespace()
    write_bag(tmp_path / "bag", ns, n=4)  # span 0.3 s -> loop offset 1.3 s
    with ros_context() as ctx:
        spin = Spinner(ctx)
        try:
            sink = spin.add(Node("sink", context=ctx, namespace=ns))
            got: list[tuple[int, int]] = []
            sink.create_subscription(
                Image,
                f"{ns}/image",
                lambda m: got.append(
                    (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, int(image_to_rgb(m, min_size=None)[0, 0, 0]))
                ),
                PLAYBACK_QOS,
            )
            player = spin.add(
                BagPlayer(
                    context=ctx,
                    namespace=ns,
                    parameter_overrides=[
                        rclpy.parameter.Parameter("bag", value=str(tmp_path / "bag")),
                        rclpy.parameter.Parameter("rate", value=3.0),
                        rclpy.parameter.Parameter("loop", value=True),
                        rclpy.parameter.Parameter("topics", value=[f"{ns}/image"]),
                        rclpy.parameter.Parameter("wait_for_topics", value=[f"{ns}/image"]),
                        SETTLE,
                    ],
                )
            )
            assert wait_for(lambda: len(got) >= 10, 15.0)
            player.stop()
            assert wait_for(player.done.is_set, 5.0)
        finally:
            spin.close()
    offset = 3 * PERIOD + 1_000_000_000
    expected = [T0 + k * offset + i * PERIOD for k in range(3) for i in range(4)]
    assert [g[0] for g in got[:10]] == expected[:10]
    assert [g[1] for g in got[:10]] == [i % 4 for i in range(10)]  # same payload every pass
