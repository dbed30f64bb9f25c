"""kitti-to-bag: a KITTI-layout sequence becomes a rosbag2 that reads back with the right types,
counts, stamps and contents (sqlite3 and mcap), written atomically.  No rclpy needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scmpr_ros.bags.kitti_to_bag import kitti_to_bag
from scmpr_ros.bags.reader import BagError, bag_info, iter_messages
from scmpr_ros.geometry import matrix_from_pose7
from scmpr_ros.msgs.conversions import image_to_rgb, read_points
from scmpr_ros.msgs.topics import (
    CAMERA_INFO_TOPIC,
    CLOUD_TOPIC,
    GROUND_TRUTH_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    TF_STATIC_TOPIC,
    TF_TOPIC,
)

N = 6
TIMES = np.array([0.0, 0.103, 0.207, 0.31, 0.414, 0.517])


def _fmt(a) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(a).reshape(-1))


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    """A tiny sequence in the exact KITTI odometry layout (calib, times, poses, image_2, velodyne, labels)."""
    import cv2

    root = tmp_path_factory.mktemp("kitti")
    seq = root / "sequences" / "00"
    for d in ("image_2", "velodyne", "labels"):
        (seq / d).mkdir(parents=True)
    K = np.array([[50.0, 0, 40.0], [0, 50.0, 12.0], [0, 0, 1]])
    P0 = np.hstack([K, np.zeros((3, 1))])
    P2 = np.hstack([K, K @ np.array([[0.06], [0.0], [0.0]])])
    Tr = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27]], dtype=float)
    (seq / "calib.txt").write_text(
        "".join(f"{n}: {_fmt(m)}\n" for n, m in (("P0", P0), ("P1", P0), ("P2", P2), ("P3", P2), ("Tr", Tr)))
    )
    (seq / "times.txt").write_text("".join(f"{t:.6e}\n" for t in TIMES))
    rows = []
    pos = np.zeros(3)
    for i in range(N):  # camera (cam0) poses: 1 m per frame along its own z axis, turning slowly
        a = 0.05 * i
        T = np.eye(4)
        T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        if i:
            pos = pos + T[:3, 2]
        T[:3, 3] = pos
        rows.append(_fmt(T[:3]))
    (seq / "poses.txt").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    for i in range(N):
        img = np.zeros((24, 80, 3), np.uint8)
        img[..., 0] = 10 * i  # red channel encodes the frame
        img[..., 2] = 200
        cv2.imwrite(str(seq / "image_2" / f"{i:06d}.png"), img[..., ::-1])  # cv2 writes BGR
        m = 100 + 10 * i
        pts = rng.normal(size=(m, 4)).astype(np.float32)
        pts.tofile(seq / "velodyne" / f"{i:06d}.bin")
        lab = np.where(np.arange(m) % 2 == 0, 40, 50).astype(np.uint32)  # SemanticKITTI road / building
        lab.tofile(seq / "labels" / f"{i:06d}.label")
    return root


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_kitti_to_bag_reads_back(kitti_root, tmp_path, storage):
    from scmpr_ros.datasets import open_sequence

    seq = open_sequence(kitti_root, "00")
    out = tmp_path / "bag"
    summary = kitti_to_bag(kitti_root, "00", out, storage, start_time_ns=1_600_000_000_000_000_000)
    assert summary.frames == N and out.is_dir()
    assert not list(tmp_path.glob(".bag.tmp-*")), "temporary directory left behind"
    info = bag_info(out)
    assert info.storage == storage and info.message_count == 6 * N + 1
    assert (info.start_ns, info.end_ns) == (summary.start_ns, summary.end_ns)
    types = {t: s.msgtype for t, s in info.topics.items()}
    assert types == {
        IMAGE_TOPIC: "sensor_msgs/msg/Image",
        CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        CLOUD_TOPIC: "sensor_msgs/msg/PointCloud2",
        GROUND_TRUTH_TOPIC: "nav_msgs/msg/Odometry",
        ODOM_TOPIC: "nav_msgs/msg/Odometry",
        TF_TOPIC: "tf2_msgs/msg/TFMessage",
        TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
    }
    counts = {t: s.count for t, s in info.topics.items()}
    assert counts == {
        IMAGE_TOPIC: N,
        CAMERA_INFO_TOPIC: N,
        CLOUD_TOPIC: N,
        GROUND_TRUTH_TOPIC: N,
        ODOM_TOPIC: N,
        TF_TOPIC: N,
        TF_STATIC_TOPIC: 1,
    }
    expected_stamps = [1_600_000_000_000_000_000 + int(round(t * 1e9)) for t in TIMES]

    by_topic: dict[str, list] = {}
    for topic, t_ns, msg in iter_messages(out):
        by_topic.setdefault(topic, []).append((t_ns, msg))
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, CLOUD_TOPIC, GROUND_TRUTH_TOPIC, ODOM_TOPIC):
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in by_topic[topic]]
        assert stamps == expected_stamps, topic
        assert [t for t, _ in by_topic[topic]] == expected_stamps  # log time = header stamp

    for i, (_, img) in enumerate(by_topic[IMAGE_TOPIC]):
        assert img.encoding == "rgb8" and img.header.frame_id == "camera"
        rgb = image_to_rgb(img)
        np.testing.assert_array_equal(rgb, seq.load_image(i))
        assert rgb[0, 0, 0] == 10 * i and rgb[0, 0, 2] == 200

    info0 = by_topic[CAMERA_INFO_TOPIC][0][1]
    assert (info0.width, info0.height) == (80, 24)
    np.testing.assert_allclose(np.asarray(info0.k).reshape(3, 3), seq.calib.K)
    np.testing.assert_allclose(np.asarray(info0.p).reshape(3, 4)[:, :3], seq.calib.K)

    for i, (_, cloud) in enumerate(by_topic[CLOUD_TOPIC]):
        pts = read_points(cloud)
        assert pts.dtype.names == ("x", "y", "z", "intensity", "label") and cloud.point_step == 20
        scan = seq.load_scan(i)
        assert len(pts) == len(scan) == 100 + 10 * i
        np.testing.assert_array_equal(pts["x"], scan[:, 0])
        np.testing.assert_array_equal(pts["intensity"], scan[:, 3])
        np.testing.assert_array_equal(pts["label"], seq.load_labels(i))
        assert len(set(pts["label"].tolist())) == 2

    for i, (_, odom) in enumerate(by_topic[GROUND_TRUTH_TOPIC]):
        assert odom.header.frame_id == "map" and odom.child_frame_id == "velodyne"
        p, q = odom.pose.pose.position, odom.pose.pose.orientation
        T = matrix_from_pose7([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        np.testing.assert_allclose(T, seq.poses_velo[i], atol=1e-9)
        tf = by_topic[TF_TOPIC][i][1].transforms[0]
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "velodyne")
        assert tf.transform.translation.x == pytest.approx(p.x)
    # 2 m over 0.207 s, forward along the LiDAR x axis (central differences in the child frame)
    v = by_topic[GROUND_TRUTH_TOPIC][2][1].twist.twist.linear
    assert v.x == pytest.approx(2.0 / 0.207, rel=0.01) and abs(v.y) < 0.05 * v.x and abs(v.z) < 1e-6
    w = by_topic[GROUND_TRUTH_TOPIC][2][1].twist.twist.angular  # 0.1 rad over 0.207 s, about the LiDAR z axis
    assert abs(w.z) == pytest.approx(0.1 / 0.207, rel=0.01)

    # /odom: the drive through the drift model, in its own frame from the origin: close to, but not, the truth
    odom_xy = np.array([[m.pose.pose.position.x, m.pose.pose.position.y] for _, m in by_topic[ODOM_TOPIC]])
    truth = seq.poses_velo
    truth_in_first = np.einsum("ij,njk->nik", np.linalg.inv(truth[0]), truth)[:, :2, 3]
    gap = np.linalg.norm(odom_xy - truth_in_first, axis=1)
    travelled = np.linalg.norm(np.diff(truth_in_first, axis=0), axis=1).sum()
    assert gap[0] == 0.0 and 0.0 < gap[-1] < 0.1 * travelled
    assert by_topic[ODOM_TOPIC][0][1].header.frame_id == "odom"

    static = by_topic[TF_STATIC_TOPIC][0][1].transforms[0]
    assert (static.header.frame_id, static.child_frame_id) == ("velodyne", "camera")
    T_vc = np.linalg.inv(seq.calib.T_cam_velo)
    assert static.transform.translation.x == pytest.approx(T_vc[0, 3])


def test_kitti_to_bag_options_and_errors(kitti_root, tmp_path):
    out = tmp_path / "bag"
    s = kitti_to_bag(kitti_root, "00", out, max_frames=3, include_lidar=False)
    info = bag_info(out)
    assert s.frames == 3 and CLOUD_TOPIC not in info.topics and info.topics[IMAGE_TOPIC].count == 3
    with pytest.raises(BagError, match="already exists"):
        kitti_to_bag(kitti_root, "00", out)
    kitti_to_bag(kitti_root, "00", out, max_frames=2, overwrite=True)
    assert bag_info(out).topics[IMAGE_TOPIC].count == 2
    with pytest.raises(BagError, match="storage"):
        kitti_to_bag(kitti_root, "00", tmp_path / "b2", storage="zip")
    with pytest.raises(BagError, match="not a rosbag2 directory"):
        bag_info(tmp_path / "nothing")
