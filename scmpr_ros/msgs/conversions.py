"""sensor_msgs Image / PointCloud2 <-> numpy, validated (no rclpy import; messages are duck-typed).

Images: rgb8, bgr8, rgba8, bgra8, mono8 are accepted and returned as (H, W, 3) uint8 RGB; rows may be
padded (step >= width * channels).  Images smaller than ``MIN_IMAGE_WIDTH`` x ``MIN_IMAGE_HEIGHT``
(32 x 16 pixels) are refused with ``ImageTooSmallError``: the encoder resizes every image to its
input size (512 x 160 by default), and a smaller one, stretched more than 16 x 10 times, holds no
place to recognise (a 1 x 1 image is a broken driver or a test pattern, not a camera frame).
cv_bridge is used for the pixel conversion when importable, our numpy path otherwise; validation is
ours in both cases.  PointCloud2 <-> numpy structured arrays through the PointField layout
(sensor_msgs_py when importable for ROS messages, numpy otherwise).
The helpers work on rclpy messages and on rosbags' message dataclasses alike (same field names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scmpr_ros.errors import InputError

try:
    from cv_bridge import CvBridge  # type: ignore[import-not-found]

    _BRIDGE = CvBridge()
except Exception:  # noqa: BLE001 - cv_bridge missing or broken: use numpy
    _BRIDGE = None

try:
    from sensor_msgs_py import point_cloud2 as _pc2  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001
    _pc2 = None

IMAGE_BACKEND = "cv_bridge" if _BRIDGE is not None else "numpy"
CLOUD_BACKEND = "sensor_msgs_py" if _pc2 is not None else "numpy"

#: encoding -> channels, for the encodings the localizer accepts
ACCEPTED_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
#: the smallest image the localizer encodes (width, height in pixels); see the module docstring
MIN_IMAGE_WIDTH = 32
MIN_IMAGE_HEIGHT = 16
MIN_IMAGE_SIZE: tuple[int, int] = (MIN_IMAGE_WIDTH, MIN_IMAGE_HEIGHT)


class ImageFormatError(InputError):
    """An Image message the localizer cannot use (encoding, size, step or data length)."""


class ImageTooSmallError(ImageFormatError):
    """A well-formed Image message smaller than the minimum the localizer encodes (MIN_IMAGE_SIZE)."""


class CloudFormatError(InputError):
    """A PointCloud2 message whose layout and data disagree."""


# ----------------------------------------------------------------------------------------- stamps


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    ns = int(ns)
    if ns < 0:
        raise InputError(f"negative time stamp {ns} ns; ROS time stamps are >= 0")
    return ns // 1_000_000_000, ns % 1_000_000_000


# ----------------------------------------------------------------------------------------- images


def check_image_size(width: int, height: int, min_size: tuple[int, int] | None = MIN_IMAGE_SIZE) -> None:
    """Raise ImageTooSmallError when a ``width`` x ``height`` image is below ``min_size`` (width, height)."""
    if min_size is None:
        return
    min_w, min_h = int(min_size[0]), int(min_size[1])
    if width < min_w or height < min_h:
        raise ImageTooSmallError(
            f"image is {width}x{height} pixels (width x height), smaller than the minimum {min_w}x{min_h} "
            "the localizer encodes; publish the camera's full-resolution images"
        )


def validate_image(msg: Any, min_size: tuple[int, int] | None = MIN_IMAGE_SIZE) -> int:
    """Check an Image message; return its channel count or raise ImageFormatError naming the field.

    ``min_size`` (width, height): smaller images raise ImageTooSmallError (None: any size >= 1 x 1)."""
    enc = str(msg.encoding)
    if enc not in ACCEPTED_ENCODINGS:
        raise ImageFormatError(
            f"image encoding '{enc}' is not supported; publish one of {', '.join(ACCEPTED_ENCODINGS)}"
        )
    ch = ACCEPTED_ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageFormatError(f"image has zero size (height={h}, width={w})")
    check_image_size(w, h, min_size)
    if step < w * ch:
        raise ImageFormatError(
            f"image step {step} does not match width {w} x {ch} bytes per pixel ({enc}); step must be >= {w * ch}"
        )
    n = len(msg.data)
    if n < h * step:
        raise ImageFormatError(f"image data has {n} bytes, shorter than height x step = {h} x {step} = {h * step}")
    if n > h * step:
        raise ImageFormatError(f"image data has {n} bytes, more than height x step = {h} x {step} = {h * step}")
    return ch


def image_to_rgb(msg: Any, min_size: tuple[int, int] | None = MIN_IMAGE_SIZE) -> np.ndarray:
    """Validated Image message -> (H, W, 3) uint8 RGB (a copy that the caller owns).

    ``min_size``: see validate_image; pass None to convert images of any size (tools, not the localizer)."""
    ch = validate_image(msg, min_size)
    enc = str(msg.encoding)
    if _BRIDGE is not None:
        try:
            out = np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as exc:  # noqa: BLE001 - report as an input problem
            raise ImageFormatError(f"cv_bridge could not convert a {enc} image: {exc}") from exc
        return np.ascontiguousarray(out.reshape(int(msg.height), int(msg.width), 3))
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=h * step).reshape(h, step)
    px = buf[:, : w * ch].reshape(h, w, ch)
    if enc == "rgb8":
        return px.copy()
    if enc == "bgr8":
        return px[:, :, ::-1].copy()
    if enc == "rgba8":
        return px[:, :, :3].copy()
    if enc == "bgra8":
        return px[:, :, 2::-1].copy()
    return np.repeat(px, 3, axis=2)  # mono8


def image_fields(pixels: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """Image message fields (height, width, encoding, is_bigendian, step, data as a uint8 array)."""
    pixels = np.asarray(pixels)
    if encoding not in ACCEPTED_ENCODINGS:
        raise ImageFormatError(f"cannot write encoding '{encoding}'; use one of {', '.join(ACCEPTED_ENCODINGS)}")
    ch = ACCEPTED_ENCODINGS[encoding]
    if pixels.dtype != np.uint8:
        raise ImageFormatError(f"image array must be uint8, got {pixels.dtype}")
    if ch == 1 and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    want = 2 if ch == 1 else 3
    if pixels.ndim != want or (ch > 1 and pixels.shape[2] != ch) or pixels.size == 0:
        raise ImageFormatError(f"array of shape {pixels.shape} does not fit encoding {encoding} ({ch} channels)")
    h, w = pixels.shape[:2]
    return {
        "height": int(h),
        "width": int(w),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(w * ch),
        "data": np.ascontiguousarray(pixels).reshape(-1),
    }


def rgb_to_image_msg(rgb: np.ndarray, stamp_ns: int = 0, frame_id: str = "camera", encoding: str = "rgb8"):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (rclpy message class), converting to ``encoding``."""
    from sensor_msgs.msg import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageFormatError(f"expected (H, W, 3) RGB, got shape {rgb.shape}")
    conv = {
        "rgb8": lambda a: a,
        "bgr8": lambda a: a[:, :, ::-1],
        "rgba8": lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=2),
        "bgra8": lambda a: np.concatenate([a[:, :, ::-1], np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=2),
        "mono8": lambda a: (
            np.round(a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).clip(0, 255).astype(np.uint8)
        ),
    }
    if encoding not in conv:
        raise ImageFormatError(f"cannot write encoding '{encoding}'; use one of {', '.join(conv)}")
    f = image_fields(conv[encoding](rgb), encoding)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding = f["height"], f["width"], f["encoding"]
    msg.is_bigendian, msg.step = 0, f["step"]
    msg.data = f["data"].tobytes()
    return msg


# ------------------------------------------------------------------------------------ point clouds

#: PointField datatype code -> numpy scalar type (sensor_msgs/PointField constants)
POINTFIELD_TYPES: dict[int, type] = {
    1: np.int8,
    2: np.uint8,
    3: np.int16,
    4: np.uint16,
    5: np.int32,
    6: np.uint32,
    7: np.float32,
    8: np.float64,
}
_NUMPY_TO_POINTFIELD = {np.dtype(v): k for k, v in POINTFIELD_TYPES.items()}


def cloud_dtype(fields: Sequence[Any], point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured numpy dtype of a PointCloud2 point from its PointField list."""
    names, formats, offsets = [], [], []
    for f in fields:
        code = int(f.datatype)
        if code not in POINTFIELD_TYPES:
            raise CloudFormatError(f"PointField '{f.name}' has unknown datatype {code} (valid: 1..8)")
        base = np.dtype(POINTFIELD_TYPES[code]).newbyteorder(">" if is_bigendian else "<")
        count = int(f.count) if int(f.count) > 0 else 1
        names.append(str(f.name))
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(f.offset))
    if len(set(names)) != len(names):
        raise CloudFormatError(f"PointCloud2 field names repeat: {names}")
    try:
        dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})
    except ValueError as exc:
        raise CloudFormatError(f"PointCloud2 fields {names} do not fit point_step {point_step}: {exc}") from exc
    return dt


def cloud_layout(dtype: np.dtype) -> tuple[list[tuple[str, int, int, int]], int]:
    """(name, offset, datatype, count) per field and point_step for a structured dtype."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        raise CloudFormatError(f"a structured dtype with named fields is required, got {dtype}")
    out = []
    for name in dtype.names:
        ft, off = dtype.fields[name][:2]
        base, count = (ft.base, int(np.prod(ft.shape))) if ft.shape else (ft, 1)
        code = _NUMPY_TO_POINTFIELD.get(np.dtype(base).newbyteorder("="))
        if code is None:
            raise CloudFormatError(f"field '{name}' has type {base}, which PointField cannot represent")
        out.append((name, int(off), code, count))
    return out, int(dtype.itemsize)


def read_points(msg: Any) -> np.ndarray:
    """PointCloud2 -> structured array of its width x height points (row padding removed)."""
    dt = cloud_dtype(msg.fields, int(msg.point_step), bool(msg.is_bigendian))
    h, w = int(msg.height), int(msg.width)
    ps, rs = int(msg.point_step), int(msg.row_step)
    if h * w == 0:
        return np.zeros(0, dtype=dt)
    if rs < w * ps:
        raise CloudFormatError(f"PointCloud2 row_step {rs} < width {w} x point_step {ps}")
    n = len(msg.data)
    if n < h * rs:
        raise CloudFormatError(f"PointCloud2 data has {n} bytes, expected height x row_step = {h * rs}")
    raw = np.frombuffer(msg.data, dtype=np.uint8, count=h * rs).reshape(h, rs)[:, : w * ps]
    return np.ascontiguousarray(raw).view(dt).reshape(-1).copy()


def cloud_fields(points: np.ndarray) -> dict[str, Any]:
    """PointCloud2 fields (without header) for a structured array; ``fields`` holds tuples
    (name, offset, datatype, count) for the caller's own PointField class (rclpy or rosbags)."""
    points = np.asarray(points)
    layout, step = cloud_layout(points.dtype)
    if points.ndim != 1:
        raise CloudFormatError(f"expected a 1-D structured array of points, got shape {points.shape}")
    little = np.ascontiguousarray(points.astype(points.dtype.newbyteorder("<")))
    return {
        "height": 1,
        "width": int(points.shape[0]),
        "fields": layout,
        "is_bigendian": False,
        "point_step": step,
        "row_step": step * int(points.shape[0]),
        "data": little.view(np.uint8).reshape(-1),
        "is_dense": True,
    }


def points_to_cloud_msg(points: np.ndarray, stamp_ns: int = 0, frame_id: str = "map"):
    """Structured array -> sensor_msgs/PointCloud2 (rclpy message class)."""
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import Header

    header = Header()
    header.stamp.sec, header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    header.frame_id = frame_id
    f = cloud_fields(points)
    pfs = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in f["fields"]]
    if _pc2 is not None:
        return _pc2.create_cloud(header, pfs, np.asarray(points))
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width, msg.fields = 1, f["width"], pfs
    msg.is_bigendian, msg.point_step, msg.row_step = False, f["point_step"], f["row_step"]
    msg.data = f["data"].tobytes()
    msg.is_dense = True
    return msg


# ---------------------------------------------------------------------------- hypotheses message
#: Layout of the localizer's hypotheses message (sensor_msgs/PointCloud2, height 1, one point per
#: hypothesis, best first, frame ``map``): pose x y z qx qy qz qw (float64), the re-ranked score
#: Sim = alpha*cos + beta*psi, its cosine and semantic overlap psi (float32), viewpoint_id (uint32).
HYPOTHESIS_DTYPE = np.dtype(
    [
        ("x", "<f8"),
        ("y", "<f8"),
        ("z", "<f8"),
        ("qx", "<f8"),
        ("qy", "<f8"),
        ("qz", "<f8"),
        ("qw", "<f8"),
        ("score", "<f4"),
        ("cosine", "<f4"),
        ("psi", "<f4"),
        ("viewpoint_id", "<u4"),
    ]
)


def read_hypotheses(msg: Any) -> np.ndarray:
    """Hypotheses PointCloud2 -> structured array with HYPOTHESIS_DTYPE's fields, best first."""
    pts = read_points(msg)
    missing = [n for n in HYPOTHESIS_DTYPE.names if n not in (pts.dtype.names or ())]
    if missing:
        raise CloudFormatError(f"hypotheses message lacks fields {missing}")
    out = np.zeros(pts.shape[0], dtype=HYPOTHESIS_DTYPE)
    for n in HYPOTHESIS_DTYPE.names:
        out[n] = pts[n]
    return out
