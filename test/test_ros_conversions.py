"""Image / PointCloud2 conversions and quaternion helpers of scmpr_ros.nodes (real message classes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import Image  # noqa: E402

from scmpr_ros import geometry as tf  # noqa: E402
from scmpr_ros.msgs import conversions as cv  # noqa: E402


def _rgb(h=16, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip_exactly(encoding):
    rgb = _rgb()
    msg = cv.rgb_to_image_msg(rgb, stamp_ns=1_500_000_123, frame_id="cam", encoding=encoding)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_123)
    out = cv.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_bgr8_channel_order_is_swapped():
    # one pixel: converted only when the size check is switched off (min_size=None), as tools do
    msg = Image(height=1, width=1, encoding="bgr8", step=3, data=bytes([10, 20, 30]))
    np.testing.assert_array_equal(cv.image_to_rgb(msg, min_size=None)[0, 0], [30, 20, 10])
    msg = Image(height=1, width=1, encoding="bgra8", step=4, data=bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(cv.image_to_rgb(msg, min_size=None)[0, 0], [30, 20, 10])


def test_mono8_is_replicated_to_three_channels():
    msg = Image(height=2, width=2, encoding="mono8", step=2, data=bytes([0, 50, 100, 255]))
    out = cv.image_to_rgb(msg, min_size=None)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 50], [100, 255]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_padded_rows_are_accepted_and_padding_dropped():
    rgb = _rgb(16, 33)
    rows = [np.concatenate([r.reshape(-1), np.full(5, 7, np.uint8)]) for r in rgb]
    msg = Image(height=16, width=33, encoding="rgb8", step=33 * 3 + 5, data=np.concatenate(rows).tobytes())
    np.testing.assert_array_equal(cv.image_to_rgb(msg), rgb)


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"encoding": "16UC1", "step": 64}, "encoding '16UC1'"),
        ({"encoding": "yuv422"}, "encoding 'yuv422'"),
        ({"height": 0, "data": b""}, "zero size"),
        ({"width": 0, "step": 0, "data": b""}, "zero size"),
        ({"data": bytes(16 * 96 - 1)}, "shorter than height x step"),
        ({"step": 90}, "step 90 does not match width 32"),
        ({"data": bytes(16 * 96 + 3)}, "more than height x step"),
    ],
)
def test_bad_images_are_rejected_with_the_reason(fields, needle):
    base = {"height": 16, "width": 32, "encoding": "rgb8", "step": 96, "data": bytes(16 * 96)}
    base.update(fields)
    msg = Image(**base)
    with pytest.raises(cv.ImageFormatError, match=needle.replace("(", r"\(")):
        cv.image_to_rgb(msg)


@pytest.mark.parametrize(
    "height, width",
    [(1, 1), (15, 32), (16, 31), (2, 640)],
)
def test_images_below_the_minimum_size_are_refused_with_both_sizes(height, width):
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=bytes(3 * width * height))
    with pytest.raises(cv.ImageTooSmallError) as err:
        cv.image_to_rgb(msg)
    text = str(err.value)
    assert f"image is {width}x{height} pixels" in text and "smaller than the minimum 32x16" in text
    assert isinstance(err.value, cv.ImageFormatError) and isinstance(err.value, cv.InputError)
    # the message itself is left as it was (the localizer drops it and counts it, nothing else)
    assert (msg.height, msg.width, len(msg.data)) == (height, width, 3 * width * height)
    # the smallest accepted image converts exactly
    rgb = _rgb(cv.MIN_IMAGE_HEIGHT, cv.MIN_IMAGE_WIDTH)
    np.testing.assert_array_equal(cv.image_to_rgb(cv.rgb_to_image_msg(rgb)), rgb)
    assert cv.MIN_IMAGE_SIZE == (32, 16)


def test_pointcloud_round_trip_with_label_field_and_count():
    dt = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "label", "rgb3"],
            "formats": ["<f4", "<f4", "<f4", "<f4", "u1", ("<u2", (3,))],
            "offsets": [0, 4, 8, 12, 16, 18],
            "itemsize": 24,
        }
    )
    pts = np.zeros(50, dt)
    rng = np.random.default_rng(1)
    for n in ("x", "y", "z", "intensity"):
        pts[n] = rng.normal(size=50)
    pts["label"] = rng.integers(0, 12, 50)
    pts["rgb3"] = rng.integers(0, 60000, (50, 3))
    msg = cv.points_to_cloud_msg(pts, stamp_ns=42, frame_id="velodyne")
    assert msg.point_step == 24 and msg.width == 50 and msg.row_step == 24 * 50
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields][-2:] == [
        ("label", 16, 2, 1),
        ("rgb3", 18, 4, 3),
    ]
    back = cv.read_points(msg)
    for n in dt.names:
        np.testing.assert_array_equal(back[n], pts[n])


def test_pointcloud_with_row_padding_and_truncated_data():
    from sensor_msgs.msg import PointCloud2, PointField

    xs = np.arange(6, dtype="<f4").reshape(2, 3)
    rows = [np.concatenate([r.view(np.uint8), np.zeros(4, np.uint8)]) for r in xs]
    msg = PointCloud2(
        height=2,
        width=3,
        point_step=4,
        row_step=16,
        is_bigendian=False,
        fields=[PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1)],
        data=np.concatenate(rows).tobytes(),
    )
    np.testing.assert_array_equal(cv.read_points(msg)["x"], np.arange(6))
    msg.data = msg.data[:-1].tobytes()
    with pytest.raises(cv.CloudFormatError, match="expected height x row_step"):
        cv.read_points(msg)
    msg.fields = [PointField(name="x", offset=0, datatype=99, count=1)]
    with pytest.raises(cv.CloudFormatError, match="unknown datatype 99"):
        cv.read_points(msg)


def test_hypotheses_layout_reads_back():
    h = np.zeros(3, cv.HYPOTHESIS_DTYPE)
    h["x"] = [1e5 + 0.123, 2.0, 3.0]
    h["qw"] = 1.0
    h["score"] = [0.9, 0.5, 0.1]
    h["viewpoint_id"] = [70000, 3, 1]
    back = cv.read_hypotheses(cv.points_to_cloud_msg(h, 7, "map"))
    np.testing.assert_array_equal(back, h)


def test_quaternions_are_xyzw_and_match_matrices():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q
        R = tf.matrix_from_quat(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(tf.quat_from_matrix(R), q, atol=1e-12)
    # 90 degrees about z: x axis -> y axis; quaternion (0, 0, sin45, cos45)
    R = tf.matrix_from_quat([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    assert tf.yaw_from_quat(tf.quat_from_yaw(-2.0)) == pytest.approx(-2.0)
    assert tf.quat_angle(tf.quat_from_yaw(0.1), tf.quat_from_yaw(0.4)) == pytest.approx(0.3)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [1, 2, 3]
    np.testing.assert_allclose(tf.matrix_from_pose7(tf.pose7_from_matrix(T)), T, atol=1e-12)
    with pytest.raises(Exception, match="zero or non-finite"):
        tf.matrix_from_quat([0, 0, 0, 0])


def test_conversions_and_bags_do_not_import_rclpy():
    code = (
        "import sys, scmpr_ros.msgs.conversions, scmpr_ros.geometry, scmpr_ros.bags.reader, "
        "scmpr_ros.bags.kitti_to_bag, scmpr_ros.msgs.map_announcement; print('rclpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
