"""KITTI-layout sequence (real KITTI, KITTI-360 or the synthetic town) -> rosbag2 (sqlite3 | mcap), no rclpy.

Per frame i, all stamped t_i = start_time + times.txt[i]: sensor_msgs/Image (rgb8, image_2),
sensor_msgs/CameraInfo (K from P2, P = [K | 0] because the ``camera`` frame is image_2 itself:
KITTI's P2 baseline column is already in T_cam_velo), sensor_msgs/PointCloud2 (x y z intensity
float32 + label uint8 when labels exist, point_step 20), ground truth nav_msgs/Odometry
(T_world_velo, twist by central differences in the child frame) and /tf map->velodyne;
/tf_static velodyne->camera once (latched QoS in the bag metadata); on ``/odom`` a simulated
odometry that is NOT the ground truth: the ground-truth path's increments through the drift model of
``localization.filter.DriftOdometry`` (2 % scale error, a slow heading bias, white noise) integrated
from the first valid pose in an ``odom`` frame — what a vehicle's wheel odometry gives the filter.

The bag is written to a temporary directory ``.OUT.tmp-PID/`` and renamed into place (never
half-written).  ``--overwrite`` swaps the complete new bag with the old one in one atomic
``renameat2(RENAME_EXCHANGE)`` where Linux offers it, else by two renames (old aside to ``.OUT.old-PID``,
new in) — a run killed between those two leaves nothing at ``OUT``, so every run first repairs what a
killed run left (``recover_interrupted_output``): it moves ``.OUT.old-PID`` back to a missing ``OUT``
and removes partial ``.OUT.tmp-PID`` directories, for PIDs that are no longer running.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.bags.reader import BagError
from scmpr_ros.geometry import heading_of, quat_from_matrix, quat_from_yaw
from scmpr_ros.io_utils import exchange_paths, pid_alive, remove_path
from scmpr_ros.localization.filter import DriftOdometry
from scmpr_ros.msgs.conversions import cloud_fields, image_fields, ns_to_sec_nanosec
from scmpr_ros.msgs.topics import (
    CAMERA_INFO_TOPIC,
    CLOUD_TOPIC,
    GROUND_TRUTH_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    TF_STATIC_TOPIC,
    TF_TOPIC,
)

# Default topic and frame names (the localizer's defaults in scmpr_ros.config.NodesConfig match).
MAP_FRAME = "map"
VELO_FRAME = "velodyne"
CAMERA_FRAME = "camera"
ODOM_FRAME = "odom"
ODOMETRY_SEED = 0  # the drift model's noise: a bag is the same every time it is written

CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity"],
        "formats": ["<f4"] * 4,
        "offsets": [0, 4, 8, 12],
        "itemsize": 16,
    }
)
LABELLED_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "label"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "u1"],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": 20,
    }
)


@dataclass(frozen=True)
class BagSummary:
    path: Path
    storage: str
    frames: int
    topics: dict[str, tuple[str, int]]  # topic -> (msgtype, message count)
    start_ns: int
    end_ns: int
    notes: tuple[str, ...] = ()  # what was repaired from an earlier, killed run (print them)


_log = logging.getLogger(__name__)


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    """(path, pid) of ``.OUT.<kind>-PID`` siblings whose process is gone (or is this one, which has not
    written anything yet), newest first."""
    prefix = f".{out.name}.{kind}-"
    found = []
    try:
        candidates = list(out.parent.glob(f"{prefix}*"))
    except OSError:
        return []
    for p in candidates:
        tail = p.name[len(prefix) :]
        if not tail.isdigit():
            continue
        pid = int(tail)
        if pid == os.getpid() or not pid_alive(pid):
            try:
                found.append((p, p.lstat().st_mtime, pid))
            except OSError:
                continue
    return [(p, pid) for p, _, pid in sorted(found, key=lambda x: x[1], reverse=True)]


def recover_interrupted_output(out: str | Path, *, discard_superseded: bool = False) -> list[str]:
    """Repair what a killed kitti_to_bag run left next to ``out``; returns one sentence per repair.

    * ``out`` missing and a ``.OUT.old-PID`` of a dead run: that is the previous bag, moved aside by an
      ``--overwrite`` killed before the new bag was renamed in: it is moved back to ``out``.
    * ``out`` present and a ``.OUT.old-PID``: the run was killed after its swap, before deleting the old
      bag; it is deleted when ``discard_superseded`` (this run replaces ``out`` anyway), else kept and named.
    * ``.OUT.tmp-PID`` of a dead run: a partial (or superseded) bag; deleted.
    Directories of runs still in progress (their PID is alive) are left alone.
    """
    out = Path(out)
    notes: list[str] = []
    if not out.parent.is_dir():
        return notes
    olds = _leftovers(out, "old")
    if olds and not out.exists() and not out.is_symlink():
        (old, pid), olds = olds[0], olds[1:]
        os.replace(old, out)
        notes.append(f"restored {out} from {old.name}, where the killed run {pid} (--overwrite) had moved it")
    for old, pid in olds:
        if discard_superseded:
            remove_path(old)
            notes.append(f"removed {old.name}, the previous bag the killed run {pid} (--overwrite) had replaced")
        else:
            notes.append(
                f"{old.name} holds the previous bag that the killed run {pid} (--overwrite) had replaced; "
                "delete it, or move it back to --out"
            )
    for tmp, pid in _leftovers(out, "tmp"):
        remove_path(tmp)
        notes.append(f"removed {tmp.name}, the unfinished output of the killed run {pid}")
    for note in notes:
        _log.warning("kitti-to-bag: %s", note)
    return notes


def _swap_in(new: Path, out: Path) -> None:
    """Put the complete bag ``new`` at ``out``; an existing ``out`` is replaced, never left missing
    except between the two renames of the fallback (which ``recover_interrupted_output`` repairs)."""
    if not out.exists() and not out.is_symlink():
        os.replace(new, out)
        return
    if exchange_paths(new, out):  # one atomic step: ``new`` now holds the old bag, removed with its tmp dir
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    remove_path(old)
    os.replace(out, old)
    os.replace(new, out)
    remove_path(old)


def _header(ts, stamp_ns: int, frame: str):
    sec, nsec = ns_to_sec_nanosec(stamp_ns)
    return ts.types["std_msgs/msg/Header"](
        stamp=ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame
    )


def _transform_msg(ts, T: np.ndarray, stamp_ns: int, parent: str, child: str):
    t = ts.types
    q = quat_from_matrix(T)
    return t["geometry_msgs/msg/TransformStamped"](
        header=_header(ts, stamp_ns, parent),
        child_frame_id=child,
        transform=t["geometry_msgs/msg/Transform"](
            translation=t["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=t["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        ),
    )


def _twist(poses: np.ndarray, times: np.ndarray, valid: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear and angular velocity of frame i in its own (child) frame, by central differences."""
    n = len(poses)
    a, b = max(0, i - 1), min(n - 1, i + 1)
    if a == b or not (valid[a] and valid[b]) or times[b] <= times[a]:
        return np.zeros(3), np.zeros(3)
    dt = float(times[b] - times[a])
    R = poses[i, :3, :3]
    v = R.T @ (poses[b, :3, 3] - poses[a, :3, 3]) / dt
    rel = poses[a, :3, :3].T @ poses[b, :3, :3]
    q = quat_from_matrix(rel)
    s = float(np.linalg.norm(q[:3]))
    angle = 2.0 * np.arctan2(s, q[3])
    w = (q[:3] / s * angle / dt) if s > 1e-12 else np.zeros(3)
    return v, w


@dataclass(frozen=True)
class _Frames:
    """The opened sequence and what every frame's messages need from it."""

    seq: Any  # datasets.Sequence
    where: str  # "ROOT sequence NAME", for messages
    n: int  # frames to convert
    times: np.ndarray  # (num_frames,) float64 seconds (times.txt)
    stamps: np.ndarray  # (num_frames,) int64 ns: start time + times
    has_poses: bool
    poses: np.ndarray | None  # (num_frames, 4, 4) T_world_velo when has_poses
    valid: np.ndarray  # (num_frames,) bool pose validity
    calib: Any


class _TopicWriter:
    """A rosbags Writer with one connection per topic and a message count per topic."""

    def __init__(self, writer: Any, ts: Any) -> None:
        self.writer = writer
        self.ts = ts
        self.types = ts.types
        self.conns: dict[str, Any] = {}
        self.counts: dict[str, list] = {}  # topic -> [msgtype, message count]

    def add(self, topic: str, msgtype: str, qos=()) -> None:
        self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts, offered_qos_profiles=qos)
        self.counts[topic] = [msgtype, 0]

    def write(self, topic: str, t_ns, msg) -> None:
        self.writer.write(self.conns[topic], int(t_ns), self.ts.serialize_cdr(msg, self.counts[topic][0]))
        self.counts[topic][1] += 1


def _prepare_output(out: Path, overwrite: bool, start_time_ns: int) -> list[str]:
    """Repair what a killed run left next to ``out`` and check that it may be written; returns the repairs."""
    notes = recover_interrupted_output(out, discard_superseded=overwrite)
    if out.exists() and not overwrite:
        repaired = f" ({'; '.join(notes)})" if notes else ""
        raise BagError(f"{out} already exists{repaired}; choose another --out, remove it, or pass --overwrite")
    if start_time_ns < 0:
        raise BagError(f"start time {start_time_ns} ns is negative")
    return notes


def _open_frames(dataset_root: str | Path, sequence: str, max_frames: int | None, start_time_ns: int) -> _Frames:
    from scmpr_ros.datasets import open_sequence

    seq = open_sequence(dataset_root, sequence)
    if not seq.has_images:
        raise BagError(f"{dataset_root} sequence {sequence} has no images (image_2); nothing to localize")
    n = seq.num_frames if max_frames is None else min(seq.num_frames, int(max_frames))
    if n <= 0:
        raise BagError(f"{dataset_root} sequence {sequence}: no frames to convert (max_frames={max_frames})")
    times = np.asarray(seq.times, dtype=np.float64)
    stamps = start_time_ns + np.round(times * 1e9).astype(np.int64)
    if np.any(np.diff(stamps[:n]) < 0):
        raise BagError(f"{dataset_root} sequence {sequence}: times.txt is not increasing")
    has_poses = bool(seq.has_poses)
    poses = np.asarray(seq.poses_velo) if has_poses else None
    valid = np.asarray(seq.pose_valid, dtype=bool) if has_poses else np.zeros(seq.num_frames, bool)
    where = f"{dataset_root} sequence {sequence}"
    return _Frames(seq, where, n, times, stamps, has_poses, poses, valid, seq.calib)


def _latched_qos():
    """Transient-local, keep-last-1 offered QoS (for /tf_static in the bag metadata)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(
        QosHistory.KEEP_LAST,
        1,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


def _add_topics(w: _TopicWriter, include_lidar: bool, has_poses: bool, latched) -> None:
    w.add(IMAGE_TOPIC, "sensor_msgs/msg/Image")
    w.add(CAMERA_INFO_TOPIC, "sensor_msgs/msg/CameraInfo")
    if include_lidar:
        w.add(CLOUD_TOPIC, "sensor_msgs/msg/PointCloud2")
    if has_poses:
        w.add(GROUND_TRUTH_TOPIC, "nav_msgs/msg/Odometry")
        w.add(ODOM_TOPIC, "nav_msgs/msg/Odometry")
        w.add(TF_TOPIC, "tf2_msgs/msg/TFMessage")
    w.add(TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", [latched])


def _write_camera(w: _TopicWriter, fr: _Frames, i: int, t_ns: int, K: np.ndarray, P: np.ndarray) -> None:
    """Frame i's Image and CameraInfo (K; P = [K | 0], no distortion)."""
    T = w.types
    rgb = fr.seq.load_image(i)
    f = image_fields(rgb, "rgb8")
    w.write(IMAGE_TOPIC, t_ns, T["sensor_msgs/msg/Image"](header=_header(w.ts, t_ns, CAMERA_FRAME), **f))
    w.write(
        CAMERA_INFO_TOPIC,
        t_ns,
        T["sensor_msgs/msg/CameraInfo"](
            header=_header(w.ts, t_ns, CAMERA_FRAME),
            height=f["height"],
            width=f["width"],
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=K.reshape(-1).copy(),
            r=np.eye(3).reshape(-1),
            p=P.reshape(-1).copy(),
            binning_x=0,
            binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        ),
    )


def _cloud_points(fr: _Frames, i: int) -> np.ndarray:
    """Frame i's scan as a structured array (x y z intensity [+ label])."""
    seq = fr.seq
    scan = seq.load_scan(i)
    labels = seq.load_labels(i) if seq.has_labels else None
    pts = np.zeros(len(scan), dtype=LABELLED_CLOUD_DTYPE if labels is not None else CLOUD_DTYPE)
    pts["x"], pts["y"], pts["z"], pts["intensity"] = scan[:, 0], scan[:, 1], scan[:, 2], scan[:, 3]
    if labels is not None:
        if len(labels) != len(scan):
            raise BagError(f"{fr.where} frame {i}: {len(labels)} labels for {len(scan)} points")
        pts["label"] = labels
    return pts


def _write_cloud(w: _TopicWriter, fr: _Frames, i: int, t_ns: int) -> None:
    T = w.types
    cf = cloud_fields(_cloud_points(fr, i))
    fields = [T["sensor_msgs/msg/PointField"](name=a, offset=o, datatype=d, count=c) for a, o, d, c in cf["fields"]]
    w.write(
        CLOUD_TOPIC,
        t_ns,
        T["sensor_msgs/msg/PointCloud2"](
            header=_header(w.ts, t_ns, VELO_FRAME),
            height=cf["height"],
            width=cf["width"],
            fields=fields,
            is_bigendian=False,
            point_step=cf["point_step"],
            row_step=cf["row_step"],
            data=cf["data"],
            is_dense=True,
        ),
    )


def _write_odometry_msg(
    w: _TopicWriter, topic: str, t_ns: int, frame: str, xyz, q, linear=(0.0, 0.0, 0.0), angular=(0.0, 0.0, 0.0)
) -> None:
    """One nav_msgs/Odometry of ``VELO_FRAME`` in ``frame``: position ``xyz``, quaternion ``q`` (x y z w) and
    child-frame twist ``linear`` / ``angular``; covariances zero."""
    T = w.types
    vector = T["geometry_msgs/msg/Vector3"]
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
        orientation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )
    twist = T["geometry_msgs/msg/Twist"](
        linear=vector(x=float(linear[0]), y=float(linear[1]), z=float(linear[2])),
        angular=vector(x=float(angular[0]), y=float(angular[1]), z=float(angular[2])),
    )
    w.write(
        topic,
        t_ns,
        T["nav_msgs/msg/Odometry"](
            header=_header(w.ts, t_ns, frame),
            child_frame_id=VELO_FRAME,
            pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
            twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
        ),
    )


def _write_ground_truth(w: _TopicWriter, fr: _Frames, i: int, t_ns: int) -> None:
    """Frame i's ground-truth Odometry (pose and child-frame twist) and its map->velodyne /tf."""
    Tw = fr.poses[i]
    v, tw = _twist(fr.poses, fr.times, fr.valid, i)
    _write_odometry_msg(w, GROUND_TRUTH_TOPIC, t_ns, MAP_FRAME, Tw[:3, 3], quat_from_matrix(Tw), v, tw)
    w.write(
        TF_TOPIC,
        t_ns,
        w.types["tf2_msgs/msg/TFMessage"](transforms=[_transform_msg(w.ts, Tw, t_ns, MAP_FRAME, VELO_FRAME)]),
    )


def drift_odometry_poses(poses: np.ndarray, valid: np.ndarray, seed: int = ODOMETRY_SEED) -> np.ndarray:
    """(N,3) x, y, yaw of simulated odometry in its own frame (NaN rows where the pose is invalid)."""
    out = np.full((len(poses), 3), np.nan)
    rows = np.flatnonzero(valid)
    if rows.size:
        truth = np.column_stack([poses[rows, 0, 3], poses[rows, 1, 3], heading_of(poses[rows], 0)])
        out[rows] = DriftOdometry(seed=seed).path(truth)
    return out


def _write_odometry(w: _TopicWriter, xyyaw: np.ndarray, t_ns: int) -> None:
    _write_odometry_msg(w, ODOM_TOPIC, t_ns, ODOM_FRAME, (xyyaw[0], xyyaw[1], 0.0), quat_from_yaw(float(xyyaw[2])))


def _write_frames(
    w: _TopicWriter, fr: _Frames, include_lidar: bool, progress: Callable[[int, int], None] | None
) -> None:
    """/tf_static once, then per frame: camera, cloud, ground truth (where the pose is valid)."""
    T_velo_cam = np.linalg.inv(np.asarray(fr.calib.T_cam_velo, dtype=np.float64))
    w.write(
        TF_STATIC_TOPIC,
        fr.stamps[0],
        w.types["tf2_msgs/msg/TFMessage"](
            transforms=[_transform_msg(w.ts, T_velo_cam, int(fr.stamps[0]), VELO_FRAME, CAMERA_FRAME)]
        ),
    )
    K = np.asarray(fr.calib.K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    odometry = drift_odometry_poses(fr.poses, fr.valid) if fr.has_poses else None
    for i in range(fr.n):
        t_ns = int(fr.stamps[i])
        _write_camera(w, fr, i, t_ns, K, P)
        if include_lidar:
            _write_cloud(w, fr, i, t_ns)
        if fr.has_poses and fr.valid[i]:
            _write_ground_truth(w, fr, i, t_ns)
            _write_odometry(w, odometry[i], t_ns)
        if progress is not None:
            progress(i + 1, fr.n)


def kitti_to_bag(
    dataset_root: str | Path,
    sequence: str,
    out: str | Path,
    storage: str = "sqlite3",
    *,
    max_frames: int | None = None,
    include_lidar: bool = True,
    start_time_ns: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BagSummary:
    """Convert one sequence; return what was written.  ``storage`` is sqlite3 or mcap."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise BagError(f"--storage {storage!r} is not supported; use sqlite3 or mcap")
    out = Path(out)
    notes = _prepare_output(out, overwrite, start_time_ns)
    fr = _open_frames(dataset_root, sequence, max_frames, start_time_ns)
    ts = get_typestore(Stores.ROS2_KILTED)

    tmp_root = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.mkdir(parents=True)
    tmp = tmp_root / out.name
    latched = _latched_qos()
    try:
        with Writer(tmp, version=9, storage_plugin=plugins[storage]) as writer:
            w = _TopicWriter(writer, ts)
            _add_topics(w, include_lidar, fr.has_poses, latched)
            _write_frames(w, fr, include_lidar, progress)
        _swap_in(tmp, out)  # overwrite: swap only after the new bag is complete
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return BagSummary(
        out,
        storage,
        fr.n,
        {k: (v[0], v[1]) for k, v in w.counts.items()},
        int(fr.stamps[0]),
        int(fr.stamps[fr.n - 1]),
        tuple(notes),
    )
