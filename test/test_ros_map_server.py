"""map_server over loopback DDS: latched announcement + poses for late joiners, reload semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseArray  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import call_service, corrupt_copy, spinning, start_map_server, unique_namespace, wait_for  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from scmpr_ros.mapping.map_file import MapData, write_map  # noqa: E402
from scmpr_ros.msgs.map_announcement import MapAnnouncement, stored_checksum  # noqa: E402
from scmpr_ros.msgs.topics import MAP_MARKERS_TOPIC, MAP_POSES_TOPIC, MAP_TOPIC
from scmpr_ros.nodes.map_server import MapServer  # noqa: E402
from scmpr_ros.nodes.qos import LATCHED_QOS
from scmpr_ros.semantics import NUM_CLASSES  # noqa: E402

pytestmark = pytest.mark.ros


def small_map(path, n=300, dim=32, seed=0, checksum="model-a"):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    yaw = rng.uniform(-np.pi, np.pi, n)
    poses = np.zeros((n, 7))
    poses[:, 0], poses[:, 1] = np.arange(n) * 2.0, rng.normal(size=n)
    poses[:, 5], poses[:, 6] = np.sin(yaw / 2), np.cos(yaw / 2)
    m = MapData(
        descriptors=d.astype(np.float16),
        poses=poses,
        viewpoint_ids=np.arange(n, dtype=np.int64) + 1000,
        source_frames=np.arange(n, dtype=np.int64),
        semantic_grids=rng.random((n, 4, 8, NUM_CLASSES)) > 0.7,
        prototypes=rng.normal(size=(NUM_CLASSES, 16)).astype(np.float32),
        camera={
            "width": 64,
            "height": 32,
            "fx": 30.0,
            "fy": 30.0,
            "cx": 32.0,
            "cy": 16.0,
            "T_cam_velo": np.eye(4).tolist(),
        },
        model_config={},
        model_checksum=checksum,
    )
    write_map(path, m)
    return path


class Listener:
    """A node that joins late and collects latched map messages."""

    def __init__(self, ctx, ns):
        self.node = Node("late_listener", context=ctx, namespace=ns)
        self.ann: list[MapAnnouncement] = []
        self.poses: list[PoseArray] = []
        self.markers: list[MarkerArray] = []
        self.node.create_subscription(
            String, MAP_TOPIC, lambda m: self.ann.append(MapAnnouncement.from_json(m.data)), LATCHED_QOS
        )
        self.node.create_subscription(PoseArray, MAP_POSES_TOPIC, self.poses.append, LATCHED_QOS)
        self.node.create_subscription(MarkerArray, MAP_MARKERS_TOPIC, self.markers.append, LATCHED_QOS)


def test_late_joiner_gets_latched_map_and_poses(tmp_path):
    path = small_map(tmp_path / "a.scmpr-map")
    ns = unique_namespace()
    with spinning() as (ctx, spin):
        server = start_map_server(spin, ctx, ns, path, max_published_poses=100)
        assert server.announcement is not None and server.version == 1
        wait_for(lambda: False, 0.5)  # the listener joins after the map was published
        late = Listener(ctx, ns)
        spin.add(late.node)
        assert wait_for(lambda: late.ann and late.poses and late.markers, 10.0)
    ann = late.ann[-1]
    assert ann.version == 1 and ann.path == str(path.resolve()) and ann.num_viewpoints == 300
    assert ann.descriptor_dim == 32 and ann.model_checksum == "model-a" and ann.frame_id == "map"
    assert ann.sha256 == stored_checksum(path) and ann.size_bytes == path.stat().st_size
    ann.check_file()  # the localizer's check passes on the untouched file
    pa = late.poses[-1]
    assert pa.header.frame_id == "map" and len(pa.poses) == 100  # 300 decimated by stride 3
    assert pa.poses[1].position.x == pytest.approx(6.0)
    assert len(late.markers[-1].markers[0].points) == 100
    assert len(json.loads(ann.to_json())) == 10


def test_reload_with_corrupt_map_keeps_the_old_one(tmp_path):
    good = small_map(tmp_path / "good.scmpr-map")
    other = small_map(tmp_path / "other.scmpr-map", n=50, seed=1, checksum="model-b")
    corrupt = corrupt_copy(good, tmp_path / "corrupt.scmpr-map", -10, 0xFF)
    ns = unique_namespace()
    with spinning() as (ctx, spin):
        server = start_map_server(spin, ctx, ns, good)
        client = spin.add(Node("client", context=ctx, namespace=ns))

        def set_map_file(p):  # as `ros2 param set` does, through the parameter service
            req = SetParameters.Request()
            req.parameters = [
                ParameterMsg(name="map_file", value=Parameter("map_file", value=str(p)).get_parameter_value())
            ]
            res = call_service(client, SetParameters, f"{ns}/map_server/set_parameters", req)
            assert res.results[0].successful

        set_map_file(corrupt)
        res = call_service(client, Trigger, f"{ns}/map_server/reload_map")
        assert not res.success and "checksum" in res.message and "keeping map v1" in res.message
        assert server.version == 1 and server.announcement.path == str(good.resolve())
        late = Listener(ctx, ns)
        spin.add(late.node)
        assert wait_for(lambda: late.ann, 10.0)
        assert late.ann[-1].version == 1 and late.ann[-1].path == str(good.resolve())

        req = SetParameters.Request()  # a bad value is refused with the config's reason, the old one stays
        req.parameters = [
            ParameterMsg(
                name="max_published_poses", value=Parameter("max_published_poses", value=0).get_parameter_value()
            )
        ]
        res = call_service(client, SetParameters, f"{ns}/map_server/set_parameters", req)
        assert not res.results[0].successful and "max_published_poses: 0 must be >= 1" in res.results[0].reason
        assert server.get_parameter("max_published_poses").value == 20000

        set_map_file(tmp_path / "missing.scmpr-map")
        res = call_service(client, Trigger, f"{ns}/map_server/reload_map")
        assert not res.success and "does not exist" in res.message

        set_map_file(other)
        res = call_service(client, Trigger, f"{ns}/map_server/reload_map")
        assert res.success, res.message
        assert wait_for(lambda: late.ann[-1].version == 2, 10.0)
        assert late.ann[-1].path == str(other.resolve()) and late.ann[-1].num_viewpoints == 50
        assert wait_for(lambda: len(late.poses[-1].poses) == 50, 10.0)


def test_server_without_map_waits_for_reload(tmp_path):
    path = small_map(tmp_path / "a.scmpr-map", n=10)
    ns = unique_namespace()
    with spinning() as (ctx, spin):
        server = start_map_server(spin, ctx, ns)
        late = Listener(ctx, ns)
        spin.add(late.node)
        assert not wait_for(lambda: late.ann, 1.0)
        server.set_parameters([Parameter("map_file", value=str(path))])
        res = call_service(late.node, Trigger, f"{ns}/map_server/reload_map")
        assert res.success and "10 viewpoints" in res.message
        assert wait_for(lambda: late.ann and late.ann[-1].version == 1, 10.0)


def test_params_file_reaches_the_nodes_by_name(tmp_path):
    """The params file of the launch files is applied by node name, as `scmpr replay` relies on."""
    from pathlib import Path

    from test_ros_bag_player import write_bag

    from scmpr_ros.nodes.bag_player import BagPlayer

    params = Path(__file__).resolve().parent.parent / "config" / "localization.params.yaml"
    custom = tmp_path / "p.yaml"
    custom.write_text(params.read_text().replace("max_published_poses: 20000", "max_published_poses: 7"))
    path = small_map(tmp_path / "a.scmpr-map", n=30)
    write_bag(tmp_path / "bag", "/x", n=1)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(custom)])
    try:
        server = MapServer(context=ctx, parameter_overrides=[Parameter("map_file", value=str(path))])
        assert server.get_parameter("max_published_poses").value == 7
        assert server.get_parameter("map_file").value == str(path)
        player = BagPlayer(
            context=ctx,
            parameter_overrides=[Parameter("bag", value=str(tmp_path / "bag")), Parameter("wait_timeout_s", value=0.1)],
        )
        assert player.get_parameter("wait_for_topics").value == ["/camera/image_raw"]
        assert player.get_parameter("clock_frequency").value == 100.0
        player.destroy_node()
        server.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
