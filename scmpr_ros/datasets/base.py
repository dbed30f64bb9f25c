"""Dataset-independent parts of a sequence: calibration record, frame bookkeeping, file checks.

A ``Sequence`` is a list of frames (LiDAR scan, optional image, labels, pose, time).  Poses are
4x4 float64 ``T_world_*`` matrices with NaN where ``pose_valid`` is False; every missing or
malformed input raises ``DatasetError`` naming the file and what was expected.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import CameraConfig
from scmpr_ros.errors import DatasetError


@dataclass(frozen=True)
class Calibration:
    K: np.ndarray  # (3,3) intrinsics of the image camera
    P: np.ndarray  # (3,4) projection of points in the rectified reference camera frame
    T_cam_velo: np.ndarray  # (4,4) LiDAR -> image camera
    image_size: tuple[int, int] | None  # (width, height) when images exist

    def project(self, points_velo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project LiDAR-frame points (M,3+) to pixels: returns (uv (M,2) float64, depth (M,))."""
        pts = np.asarray(points_velo, dtype=np.float64)[:, :3]
        cam = pts @ self.T_cam_velo[:3, :3].T + self.T_cam_velo[:3, 3]
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uvw = cam @ self.K.T
            uv = uvw[:, :2] / uvw[:, 2:3]
        return uv, depth


def to_homogeneous(rows: np.ndarray) -> np.ndarray:
    """(N,12) row-major 3x4 matrices -> (N,4,4)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)
    out = np.zeros((rows.shape[0], 4, 4))
    out[:, :3, :] = rows
    out[:, 3, 3] = 1.0
    return out


def read_numbers_file(path: Path, columns: int, what: str) -> np.ndarray:
    """Read a whitespace-separated text table with exactly ``columns`` numbers per line."""
    rows = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); expected {what}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns:
            raise DatasetError(f"{path}:{lineno}: has {len(parts)} values, expected {columns} ({what})")
        try:
            rows.append([float(p) for p in parts])
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: not a number ({exc}); expected {what}") from exc
    if not rows:
        return np.zeros((0, columns))
    return np.asarray(rows, dtype=np.float64)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: directory not found; expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; expected {what}")
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR header, without decoding the image."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DatasetError(f"{path}: not a readable image (expected a PNG)")
        return int(img.shape[1]), int(img.shape[0])
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def read_rgb(path: Path, expected_size: tuple[int, int] | None) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (missing, truncated or not an image)")
    if expected_size is not None and (img.shape[1], img.shape[0]) != tuple(expected_size):
        raise DatasetError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} but the sequence's first image is "
            f"{expected_size[0]}x{expected_size[1]}; all images of a sequence must have one size"
        )
    return np.ascontiguousarray(img[:, :, ::-1])


def read_scan_bin(path: Path) -> np.ndarray:
    """KITTI velodyne .bin: float32 x, y, z, reflectance."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DatasetError(f"{path}: scan file not found ({exc})") from exc
    if size % 16:
        raise DatasetError(
            f"{path}: {size} bytes is not a multiple of 16; expected float32 x,y,z,reflectance "
            "records (file truncated?)"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def scan_point_count(path: Path) -> int:
    return os.path.getsize(path) // 16


class Sequence:
    """One sequence of frames.  Loaders fill the attributes in their ``__init__``."""

    root: Path
    name: str
    kind: str
    num_frames: int
    has_images: bool
    has_labels: bool
    has_poses: bool
    calib: Calibration
    times: np.ndarray
    pose_valid: np.ndarray
    poses_velo: np.ndarray
    poses_cam: np.ndarray
    frame_ids: list[str]  # file stems, one per frame
    label_valid: np.ndarray  # (N,) bool: frame i has per-point labels
    has_image_labels: bool = False  # dense per-pixel classes (synthetic town only): load_image_labels(i)
    calib_keys: list[str]
    notes: list[str]

    def __len__(self) -> int:
        return self.num_frames

    def _check_index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise DatasetError(f"{self.name}: frame index must be an integer, got {i!r}")
        if i < 0 or i >= self.num_frames:
            raise DatasetError(f"{self.name}: frame {i} out of range; the sequence has {self.num_frames} frames")
        return int(i)

    # file-based loaders fill these: one image / one .bin scan path per frame
    _images: list[Path]
    _scans: list[Path]

    def load_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of frame i (checked against the calibration's image size)."""
        i = self._check_index(i)
        if not self.has_images:
            raise self._no_images_error()
        return read_rgb(self._images[i], self.calib.image_size)

    def load_scan(self, i: int) -> np.ndarray:
        """(N, 4) float32 x y z reflectance of frame i."""
        return read_scan_bin(self._scans[self._check_index(i)])

    def load_labels(self, i: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def load_image_labels(self, i: int) -> np.ndarray:
        raise DatasetError(f"{self.name}: this {self.kind} sequence has no dense image labels")

    def _no_images_error(self) -> DatasetError:
        return DatasetError(
            f"{self.name} ({self.root}) has no camera images; this command needs images "
            "(a LiDAR-only sequence can only be used for mapping)"
        )

    def describe(self) -> dict[str, Any]:
        """What the sequence holds (printed by ``scmpr dataset-info``)."""
        finite_t = self.times[np.isfinite(self.times)] if len(self.times) else self.times
        span = (float(finite_t.min()), float(finite_t.max())) if len(finite_t) else (0.0, 0.0)
        path_len = 0.0
        if self.has_poses and self.pose_valid.sum() > 1:
            xyz = self.poses_velo[self.pose_valid, :3, 3]
            path_len = float(np.linalg.norm(np.diff(xyz, axis=0), axis=1).sum())
        return {
            "name": self.name,
            "kind": self.kind,
            "root": str(self.root),
            "frames": int(self.num_frames),
            "has_images": bool(self.has_images),
            "image_size": list(self.calib.image_size) if self.calib.image_size else None,
            "has_labels": bool(self.has_labels),
            "labelled_frames": int(self.label_valid.sum()),
            "has_image_labels": bool(self.has_image_labels),
            "has_poses": bool(self.has_poses),
            "valid_poses": int(self.pose_valid.sum()),
            "path_length_m": round(path_len, 2),
            "calib_keys": list(self.calib_keys),
            "time_span_s": [round(span[0], 6), round(span[1], 6)],
            "duration_s": round(span[1] - span[0], 6),
            "notes": list(self.notes),
        }


def camera_from_calibration(calib: Any, fallback: CameraConfig) -> CameraConfig:
    """The dataset camera's intrinsics and size (falls back to the config's size without images)."""
    K = np.asarray(calib.K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0:
        raise DatasetError(f"calibration K must be a finite 3x3 intrinsic matrix, got {K.tolist()}")
    size = getattr(calib, "image_size", None)
    width, height = (int(size[0]), int(size[1])) if size else (fallback.width, fallback.height)
    return CameraConfig(
        width=width, height=height, fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2])
    )
