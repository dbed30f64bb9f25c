"""KITTI-360 loader: data_2d_raw (image_00 rectified), data_3d_raw, data_poses, calibration.

Geometry (kitti360scripts conventions): ``T_cam_velo = R_rect_00 T_velo_cam0^-1`` (LiDAR -> rectified
camera 0), ``T_world_velo = T_world_pose T_pose_cam0 T_velo_cam0^-1``; ``T_world_cam`` from
cam0_to_world.txt when present, else ``T_world_pose T_pose_cam0 R_rect_00^-1``.  Per-point labels
come from data_3d_semantics: each scan point takes the class of the nearest point of the
accumulated labelled window (PLY) covering the frame, if within ``LABEL_RADIUS_M``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from scmpr_ros.datasets.base import (
    Calibration,
    Sequence,
    png_size,
    read_numbers_file,
    require_dir,
    require_file,
)
from scmpr_ros.errors import DatasetError
from scmpr_ros.semantics import IGNORE_ID, kitti360_to_common

LABEL_RADIUS_M = 0.3


def _parse_keyed(path: Path, what: str) -> dict[str, np.ndarray]:
    require_file(path, what)
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. "calib_time: 09-Jan-2012 13:57:47"
    return out


def _keyed_matrix(data: dict[str, np.ndarray], key: str, size: int, path: Path, what: str) -> np.ndarray:
    if key not in data:
        raise DatasetError(
            f"{path}: no '{key}' line; expected '{key}: {size} numbers' ({what}). "
            f"Keys found: {', '.join(data) or 'none'}"
        )
    if data[key].size != size:
        raise DatasetError(f"{path}: '{key}' has {data[key].size} numbers, expected {size} ({what})")
    return data[key]


def _hom(m34: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :] = np.asarray(m34).reshape(3, 4)
    return T


def read_ply_vertices(path: Path) -> np.ndarray:
    """Vertex element of a PLY file (binary little/big endian or ascii) as a structured array."""
    types = {
        "char": "i1",
        "int8": "i1",
        "uchar": "u1",
        "uint8": "u1",
        "short": "i2",
        "int16": "i2",
        "ushort": "u2",
        "uint16": "u2",
        "int": "i4",
        "int32": "i4",
        "uint": "u4",
        "uint32": "u4",
        "float": "f4",
        "float32": "f4",
        "double": "f8",
        "float64": "f8",
    }
    with open(path, "rb") as handle:
        if handle.readline().strip() != b"ply":
            raise DatasetError(f"{path}: not a PLY file (first line is not 'ply')")
        fmt, count, props, in_vertex = None, None, [], False
        while True:
            line = handle.readline()
            if not line:
                raise DatasetError(f"{path}: PLY header has no 'end_header' line (truncated file?)")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
                elif count is None:
                    raise DatasetError(f"{path}: PLY element '{words[1]}' precedes 'vertex'; expected vertex first")
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in types:
                    raise DatasetError(f"{path}: unsupported vertex property type {' '.join(words[1:])}")
                props.append((words[2], types[words[1]]))
        if count is None or not props:
            raise DatasetError(f"{path}: PLY file has no vertex element")
        if fmt == "ascii":
            table = np.loadtxt(handle, max_rows=count, ndmin=2)
            out = np.zeros(count, dtype=[(n, t) for n, t in props])
            for j, (name, _) in enumerate(props):
                out[name] = table[:, j]
            return out
        if fmt not in ("binary_little_endian", "binary_big_endian"):
            raise DatasetError(f"{path}: unknown PLY format {fmt!r}")
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        data = np.fromfile(handle, dtype=dtype, count=count)
    if data.size != count:
        raise DatasetError(f"{path}: PLY declares {count} vertices but holds {data.size} (truncated file?)")
    return data


def _find_drive(base: Path, sequence: str) -> str | None:
    if (base / sequence).is_dir():
        return sequence
    if sequence.isdigit():
        pattern = f"_drive_{int(sequence):04d}_sync"
        for p in sorted(base.iterdir()) if base.is_dir() else []:
            if p.is_dir() and p.name.endswith(pattern):
                return p.name
    return None


def list_sequences(root: Path) -> list[str]:
    base = root / "data_3d_raw"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _parse_timestamps(path: Path) -> np.ndarray:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        stamps = np.array([np.datetime64(line.replace(" ", "T"), "ns") for line in lines])
    except ValueError as exc:
        raise DatasetError(
            f"{path}: unreadable timestamp ({exc}); expected 'YYYY-MM-DD hh:mm:ss.fffffffff' per line"
        ) from exc
    if not len(stamps):
        return np.zeros(0)
    return (stamps - stamps[0]).astype(np.int64) / 1e9


class Kitti360Sequence(Sequence):
    """One KITTI-360 drive (``2013_05_28_drive_NNNN_sync``)."""

    def __init__(self, root: str | Path, sequence: str | int):
        self.root = Path(root)
        self.kind = "kitti360"
        self.notes = []
        raw3d = require_dir(self.root / "data_3d_raw", "data_3d_raw/<drive>/velodyne_points/data/*.bin")
        drive = _find_drive(raw3d, str(sequence))
        if drive is None:
            raise DatasetError(
                f"{raw3d}: drive '{sequence}' not found; "
                f"expected a folder like 2013_05_28_drive_{str(sequence).zfill(4)}_sync. "
                f"Drives present: {', '.join(list_sequences(self.root)) or 'none'}"
            )
        self.name = drive
        velo_dir = require_dir(raw3d / drive / "velodyne_points" / "data", "velodyne_points/data/NNNNNNNNNN.bin scans")
        scans = {int(p.stem): p for p in velo_dir.glob("*.bin") if p.stem.isdigit()}
        if not scans:
            raise DatasetError(f"{velo_dir}: no .bin scans; expected 0000000000.bin, 0000000001.bin, ...")
        frames = sorted(scans)

        img_dir = self.root / "data_2d_raw" / drive / "image_00" / "data_rect"
        images: dict[int, Path] = {}
        if img_dir.is_dir():
            images = {int(p.stem): p for p in img_dir.glob("*.png") if p.stem.isdigit()}
            if not images:
                raise DatasetError(f"{img_dir}: no .png images; expected data_rect/0000000000.png, ...")
            both = sorted(set(frames) & set(images))
            if not both:
                raise DatasetError(
                    f"{img_dir}: none of its {len(images)} image frame numbers "
                    f"matches the {len(frames)} scans in {velo_dir}"
                )
            if len(both) != len(frames) or len(both) != len(images):
                self.notes.append(
                    f"{len(frames)} scans and {len(images)} images: using the {len(both)} frames that have both "
                    f"({len(frames) - len(both)} scans without image, "
                    f"{len(images) - len(both)} images without scan left out)"
                )
            frames = both
        else:
            self.notes.append(f"no {img_dir.relative_to(self.root)}: LiDAR-only (mapping only)")
        self.frame_index = np.asarray(frames, dtype=np.int64)
        self.frame_ids = [f"{f:010d}" for f in frames]
        self._scans = [scans[f] for f in frames]
        self._images = [images[f] for f in frames] if images else []
        self.has_images = bool(self._images)
        self.num_frames = n = len(frames)

        self._load_calibration(self._images[0] if self._images else None)

        ts_path = require_file(
            velo_dir.parent / "timestamps.txt", "one 'YYYY-MM-DD hh:mm:ss.fffffffff' line per scan frame number"
        )
        stamps = _parse_timestamps(ts_path)
        if len(stamps) <= frames[-1]:
            raise DatasetError(
                f"{ts_path}: has {len(stamps)} timestamps but the scans go up to frame {frames[-1]}; "
                "expected one line per frame number"
            )
        self.times = stamps[self.frame_index]

        self._load_poses(drive, n)
        self._find_semantics(drive)

    # --- calibration ------------------------------------------------------------------------
    def _load_calibration(self, first_image: Path | None) -> None:
        cal_dir = require_dir(
            self.root / "calibration", "calibration/ with perspective.txt, calib_cam_to_velo.txt, calib_cam_to_pose.txt"
        )
        persp_path = cal_dir / "perspective.txt"
        persp = _parse_keyed(persp_path, "P_rect_00 / R_rect_00 / S_rect_00 lines")
        P = _keyed_matrix(persp, "P_rect_00", 12, persp_path, "rectified projection of camera 0").reshape(3, 4)
        R_rect = np.eye(4)
        R_rect[:3, :3] = _keyed_matrix(persp, "R_rect_00", 9, persp_path, "rectifying rotation of camera 0").reshape(
            3, 3
        )
        velo_path = require_file(cal_dir / "calib_cam_to_velo.txt", "12 numbers: camera 0 -> velodyne (row-major 3x4)")
        nums = velo_path.read_text().split()
        if len(nums) != 12:
            raise DatasetError(
                f"{velo_path}: has {len(nums)} numbers, expected 12 (camera 0 -> velodyne, row-major 3x4)"
            )
        try:
            self.T_velo_cam0 = _hom(np.array([float(v) for v in nums]))
        except ValueError as exc:
            raise DatasetError(f"{velo_path}: non-number in the matrix ({exc})") from exc
        self.R_rect = R_rect
        image_size = png_size(first_image) if first_image is not None else None
        self.calib = Calibration(
            K=P[:, :3].copy(), P=P, T_cam_velo=R_rect @ np.linalg.inv(self.T_velo_cam0), image_size=image_size
        )
        self.calib_keys = sorted(k for k in persp if k.endswith("_00")) + ["calib_cam_to_velo"]
        self._cal_dir = cal_dir

    def _cam_to_pose(self) -> np.ndarray:
        path = self._cal_dir / "calib_cam_to_pose.txt"
        data = _parse_keyed(path, "'image_00: 12 numbers' (camera 0 -> GPS/IMU pose frame)")
        if "calib_cam_to_pose" not in self.calib_keys:
            self.calib_keys.append("calib_cam_to_pose")
        return _hom(_keyed_matrix(data, "image_00", 12, path, "camera 0 -> GPS/IMU pose frame"))

    # --- poses ------------------------------------------------------------------------------
    def _load_poses(self, drive: str, n: int) -> None:
        self.poses_velo = np.full((n, 4, 4), np.nan)
        self.poses_cam = np.full((n, 4, 4), np.nan)
        self.pose_valid = np.zeros(n, dtype=bool)
        pose_dir = self.root / "data_poses" / drive
        pose_path, cam_path = pose_dir / "poses.txt", pose_dir / "cam0_to_world.txt"
        velo_from_cam0 = np.linalg.inv(self.T_velo_cam0)  # calibration matrices are not exactly orthonormal
        lookup = {int(f): i for i, f in enumerate(self.frame_index)}
        cam_valid = np.zeros(n, dtype=bool)
        if cam_path.is_file():
            rows = read_numbers_file(
                cam_path, 17, "frame number + 16 numbers (4x4 rectified camera 0 -> world) per line"
            )
            for row in rows:
                i = lookup.get(int(row[0]))
                if i is not None:
                    self.poses_cam[i] = row[1:].reshape(4, 4)
                    cam_valid[i] = True
        if pose_path.is_file():
            rows = read_numbers_file(pose_path, 13, "frame number + 12 numbers (GPS/IMU pose -> world) per line")
            T_pose_cam0 = self._cam_to_pose()
            for row in rows:
                i = lookup.get(int(row[0]))
                if i is None:
                    continue
                T_w_pose = _hom(row[1:])
                self.poses_velo[i] = T_w_pose @ T_pose_cam0 @ velo_from_cam0
                if not cam_valid[i]:
                    self.poses_cam[i] = T_w_pose @ T_pose_cam0 @ np.linalg.inv(self.R_rect)
                self.pose_valid[i] = True
        elif cam_valid.any():
            # only cam0_to_world.txt: the LiDAR pose follows from the rectified camera pose
            T_camrect_velo = self.calib.T_cam_velo
            self.poses_velo[cam_valid] = self.poses_cam[cam_valid] @ T_camrect_velo
            self.pose_valid = cam_valid.copy()
        self.poses_cam[~self.pose_valid] = np.nan
        self.has_poses = bool(self.pose_valid.any())
        if not pose_dir.is_dir():
            self.notes.append(f"no data_poses/{drive}/: frames have no poses")
        elif not self.has_poses:
            self.notes.append(f"{pose_dir}: no pose for any of the {n} frames (poses.txt / cam0_to_world.txt)")
        elif not self.pose_valid.all():
            self.notes.append(
                f"{int((~self.pose_valid).sum())} of {n} frames have no pose (KITTI-360 poses are sparse)"
            )

    # --- semantics --------------------------------------------------------------------------
    def _find_semantics(self, drive: str) -> None:
        self._windows: list[tuple[int, int, Path]] = []
        sem_root = self.root / "data_3d_semantics"
        for base in (sem_root / "train" / drive / "static", sem_root / drive / "static"):
            if base.is_dir():
                for p in sorted(base.glob("*.ply")):
                    m = re.fullmatch(r"(\d+)_(\d+)", p.stem)
                    if m:
                        self._windows.append((int(m.group(1)), int(m.group(2)), p))
                break
        self.label_valid = np.zeros(self.num_frames, dtype=bool)
        if not self._windows:
            self.has_labels = False
            if sem_root.is_dir():
                self.notes.append(f"{sem_root}: no static/<start>_<end>.ply windows for {drive}; no per-point labels")
            return
        for i, f in enumerate(self.frame_index):
            self.label_valid[i] = self.pose_valid[i] and any(a <= f <= b for a, b, _ in self._windows)
        self.has_labels = bool(self.label_valid.any())
        if self.has_labels and not self.label_valid.all():
            self.notes.append(
                f"{int((~self.label_valid).sum())} of {self.num_frames} frames have no labels "
                "(no pose or no semantic window)"
            )

    def _window_for(self, frame: int) -> Path:
        covering = [(abs((a + b) / 2 - frame), p) for a, b, p in self._windows if a <= frame <= b]
        return min(covering)[1]

    # --- frame access -----------------------------------------------------------------------
    def load_labels(self, i: int) -> np.ndarray:
        """Common class ids per point, transferred from the labelled window (IGNORE_ID if none near)."""
        i = self._check_index(i)
        if not self.label_valid[i]:
            why = "no pose" if not self.pose_valid[i] else "no data_3d_semantics window covers it"
            raise DatasetError(f"{self.name}: frame {self.frame_ids[i]} has no labels ({why}); check label_valid first")
        scan = self.load_scan(i)
        window = _load_window(self._window_for(int(self.frame_index[i])))
        pts_world = scan[:, :3].astype(np.float64) @ self.poses_velo[i, :3, :3].T + self.poses_velo[i, :3, 3]
        return window.lookup(pts_world, LABEL_RADIUS_M)


class _LabelledWindow:
    def __init__(self, path: Path):
        import open3d as o3d

        verts = read_ply_vertices(path)
        names = verts.dtype.names or ()
        for key in ("x", "y", "z", "semantic"):
            if key not in names:
                raise DatasetError(f"{path}: PLY vertices have no '{key}' property; expected x, y, z, semantic")
        xyz = np.stack([verts["x"], verts["y"], verts["z"]], axis=1).astype(np.float64)
        self.origin = xyz.mean(axis=0) if len(xyz) else np.zeros(3)
        self.classes = kitti360_to_common(verts["semantic"].astype(np.int64))
        self.nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor((xyz - self.origin).astype(np.float32)))
        self.nns.knn_index()

    def lookup(self, pts_world: np.ndarray, radius: float) -> np.ndarray:
        import open3d as o3d

        out = np.full(len(pts_world), IGNORE_ID, dtype=np.uint8)
        if not len(pts_world) or not len(self.classes):
            return out
        q = o3d.core.Tensor((pts_world - self.origin).astype(np.float32))
        idx, dist2 = self.nns.knn_search(q, 1)
        idx = idx.numpy()[:, 0]
        near = dist2.numpy()[:, 0] <= radius * radius
        out[near] = self.classes[idx[near]]
        return out


@lru_cache(maxsize=2)
def _load_window(path: Path) -> _LabelledWindow:
    return _LabelledWindow(path)
