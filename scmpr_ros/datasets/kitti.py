"""KITTI odometry + SemanticKITTI loader (``sequences/NN/...``); the synthetic town uses it too.

Geometry: ``T_cam2_cam0`` is the translation ``K2^-1 P2[:,3]``; ``T_cam_velo = T_cam2_cam0 Tr``.
World frame: poses.txt holds camera-0 poses ``T_w_cam0``; like SemanticKITTI's tools we express
them in the LiDAR frame of the first pose (z up, REP-103 ``map``):
``T_map_velo = Tr^-1 T_w_cam0 Tr`` and ``T_map_cam = Tr^-1 T_w_cam0 T_cam2_cam0^-1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scmpr_ros.datasets.base import (
    Calibration,
    Sequence,
    png_size,
    read_numbers_file,
    require_dir,
    require_file,
    scan_point_count,
    to_homogeneous,
)
from scmpr_ros.errors import DatasetError
from scmpr_ros.semantics import semantic_kitti_to_common

CALIB_FORMAT = "one 'KEY: numbers' line per matrix (P0..P3: 12 numbers each, Tr: 12 numbers)"
_TR_ALIASES = ("Tr", "Tr_velo_to_cam", "Tr_velo_cam")


def parse_calib(path: Path) -> dict[str, np.ndarray]:
    """Read a KITTI odometry calib.txt into {key: array of numbers}."""
    require_file(path, CALIB_FORMAT)
    out: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DatasetError(f"{path}:{lineno}: no ':' in {line.strip()[:40]!r}; expected {CALIB_FORMAT}")
        key, values = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: key '{key.strip()}' has a non-number ({exc})") from exc
    return out


def _matrix(calib: dict[str, np.ndarray], key: str, path: Path, what: str) -> np.ndarray:
    if key not in calib:
        found = ", ".join(calib) or "none"
        raise DatasetError(
            f"{path}: no '{key}' line; expected '{key}: 12 numbers' ({what}). Keys found: {found}. "
            "Use the calib.txt of the KITTI odometry 'data_odometry_calib' download."
        )
    values = calib[key]
    if values.size != 12:
        raise DatasetError(f"{path}: '{key}' has {values.size} numbers, expected 12 ({what}, row-major 3x4)")
    return values.reshape(3, 4)


def calibration_from_file(
    path: Path, image_size: tuple[int, int] | None
) -> tuple[Calibration, np.ndarray, np.ndarray, list[str]]:
    """Return (Calibration, Tr 4x4, T_cam2_cam0 4x4, keys)."""
    calib = parse_calib(path)
    P2 = _matrix(calib, "P2", path, "projection matrix of the left colour camera image_2")
    tr_key = next((k for k in _TR_ALIASES if k in calib), "Tr")
    Tr = np.eye(4)
    Tr[:3, :] = _matrix(calib, tr_key, path, "velodyne -> camera-0 transform")
    K = P2[:, :3].copy()
    if abs(K[0, 0]) < 1e-9 or abs(K[1, 1]) < 1e-9:
        raise DatasetError(
            f"{path}: P2 has a zero focal length ({K[0, 0]}, {K[1, 1]}); the matrix is not a camera projection"
        )
    T_c2_c0 = np.eye(4)
    T_c2_c0[:3, 3] = np.linalg.solve(K, P2[:, 3])
    cal = Calibration(K=K, P=P2.copy(), T_cam_velo=T_c2_c0 @ Tr, image_size=image_size)
    return cal, Tr, T_c2_c0, list(calib)


def format_calib(P: dict[str, np.ndarray], Tr: np.ndarray) -> str:
    """calib.txt text for projection matrices {"P0": (3,4), ...} and Tr (4x4 or 3x4)."""
    lines = []
    for key in ("P0", "P1", "P2", "P3"):
        lines.append(f"{key}: " + " ".join(f"{v:.12e}" for v in np.asarray(P[key]).reshape(-1)[:12]))
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in np.asarray(Tr)[:3, :4].reshape(-1)))
    return "\n".join(lines) + "\n"


def format_poses(T_w_cam0: np.ndarray) -> str:
    """poses.txt text: one row-major 3x4 matrix (12 numbers) per line."""
    return "".join(" ".join(f"{v:.12e}" for v in T[:3, :4].reshape(-1)) + "\n" for T in T_w_cam0)


def format_times(times: np.ndarray) -> str:
    return "".join(f"{t:.6e}\n" for t in times)


def find_sequence_dir(root: Path, sequence: str) -> Path:
    """``root/sequences/NN`` or ``root/NN`` (when root is the sequences folder itself)."""
    candidates = [root / "sequences" / sequence, root / sequence]
    for cand in candidates:
        if cand.is_dir():
            return cand
    available = list_sequences(root)
    raise DatasetError(
        f"{root}: KITTI sequence '{sequence}' not found; looked for {candidates[0]} and {candidates[1]}. "
        f"Sequences present: {', '.join(available) if available else 'none'}"
    )


def list_sequences(root: Path) -> list[str]:
    base = root / "sequences" if (root / "sequences").is_dir() else root
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "velodyne").is_dir())


def normalize_name(sequence: str | int) -> str:
    s = str(sequence).strip()
    return s.zfill(2) if s.isdigit() else s


class KittiSequence(Sequence):
    """A KITTI odometry / SemanticKITTI sequence (``sequences/NN``)."""

    def __init__(self, root: str | Path, sequence: str | int):
        self.root = Path(root)
        self.name = normalize_name(sequence)
        self.kind = "kitti"
        self.notes = []
        seq_dir = find_sequence_dir(self.root, self.name)
        self.seq_dir = seq_dir
        velo_dir = require_dir(seq_dir / "velodyne", "velodyne/NNNNNN.bin LiDAR scans (float32 x,y,z,reflectance)")
        self._scans = sorted(velo_dir.glob("*.bin"))
        if not self._scans:
            raise DatasetError(f"{velo_dir}: no .bin scans; expected velodyne/000000.bin, 000001.bin, ...")
        self.frame_ids = [p.stem for p in self._scans]
        self.num_frames = n = len(self._scans)

        # images (optional: SemanticKITTI's LiDAR-only download has none)
        img_dir = seq_dir / "image_2"
        self._images: list[Path] = []
        image_size = None
        if img_dir.is_dir():
            self._images = sorted(img_dir.glob("*.png"))
            self._check_pairing(img_dir, [p.stem for p in self._images], "images", "image_2/NNNNNN.png")
            image_size = png_size(self._images[0])
        else:
            self.notes.append("no image_2/: LiDAR-only sequence (mapping only)")
        self.has_images = bool(self._images)

        # labels (optional)
        lab_dir = seq_dir / "labels"
        self._labels: list[Path] = []
        if lab_dir.is_dir():
            self._labels = sorted(lab_dir.glob("*.label"))
            self._check_pairing(lab_dir, [p.stem for p in self._labels], "label files", "labels/NNNNNN.label")
        self.has_labels = bool(self._labels)
        self.label_valid = np.full(n, self.has_labels, dtype=bool)

        # dense per-pixel classes of image_2 (written by the synthetic town with --class-images)
        sem_dir = seq_dir / "semantic_2"
        self._image_labels: list[Path] = []
        if sem_dir.is_dir() and self.has_images:
            self._image_labels = sorted(sem_dir.glob("*.png"))
            self._check_pairing(sem_dir, [p.stem for p in self._image_labels], "class images", "semantic_2/NNNNNN.png")
        self.has_image_labels = bool(self._image_labels)

        self.calib, self.Tr, self.T_cam2_cam0, self.calib_keys = calibration_from_file(
            seq_dir / "calib.txt", image_size
        )

        times_path = require_file(seq_dir / "times.txt", f"one timestamp in seconds per frame ({n} lines)")
        times = read_numbers_file(times_path, 1, "one timestamp in seconds per line")[:, 0] if n else np.zeros(0)
        if len(times) != n:
            raise DatasetError(
                f"{times_path}: has {len(times)} timestamps but velodyne/ has {n} scans; expected one line per frame"
            )
        self.times = times

        self._load_poses(n)

    def _check_pairing(self, folder: Path, stems: list[str], what: str, pattern: str) -> None:
        if stems == self.frame_ids:
            return
        missing = sorted(set(self.frame_ids) - set(stems))
        extra = sorted(set(stems) - set(self.frame_ids))
        detail = []
        if missing:
            detail.append(f"first frame without one: {missing[0]}")
        if extra:
            detail.append(f"first one without a scan: {extra[0]}")
        raise DatasetError(
            f"{folder}: has {len(stems)} {what} but velodyne/ has {self.num_frames} scans "
            f"({'; '.join(detail)}); expected one {pattern} per scan"
        )

    def _load_poses(self, n: int) -> None:
        candidates = [self.seq_dir / "poses.txt"]
        if self.seq_dir.parent.name == "sequences":
            candidates.append(self.seq_dir.parent.parent / "poses" / f"{self.name}.txt")
        path = next((c for c in candidates if c.is_file()), None)
        self.poses_velo = np.full((n, 4, 4), np.nan)
        self.poses_cam = np.full((n, 4, 4), np.nan)
        self.pose_valid = np.zeros(n, dtype=bool)
        self.has_poses = False
        if path is None:
            self.notes.append(f"no poses ({' or '.join(str(c) for c in candidates)} not found)")
            return
        rows = read_numbers_file(path, 12, "a camera-0 pose as 12 numbers (row-major 3x4) per line")
        if len(rows) != n:
            raise DatasetError(
                f"{path}: has {len(rows)} poses but velodyne/ has {n} scans; expected one pose line per frame"
            )
        T_w_c0 = to_homogeneous(rows)
        valid = np.isfinite(rows).all(axis=1)
        Tr_inv = np.linalg.inv(self.Tr)  # calibration rotations are not exactly orthonormal
        c2_inv = np.linalg.inv(self.T_cam2_cam0)
        self.poses_velo[valid] = Tr_inv @ T_w_c0[valid] @ self.Tr
        self.poses_cam[valid] = Tr_inv @ T_w_c0[valid] @ c2_inv
        self.pose_valid = valid
        self.has_poses = bool(valid.any())
        self.pose_source = path
        if not valid.all():
            self.notes.append(f"{int((~valid).sum())} frames have non-finite poses in {path.name}")

    def load_image_labels(self, i: int) -> np.ndarray:
        """(H, W) uint8 common class per pixel of image i (255 = none), from semantic_2/."""
        i = self._check_index(i)
        if not self.has_image_labels:
            raise DatasetError(
                f"{self.seq_dir}: no semantic_2/ folder; "
                "only the synthetic town (--class-images) has dense image labels"
            )
        import cv2

        path = self._image_labels[i]
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        size = self.calib.image_size
        if img is None or img.ndim != 2 or img.dtype != np.uint8 or (img.shape[1], img.shape[0]) != tuple(size):
            raise DatasetError(f"{path}: expected a single-channel 8-bit PNG of {size[0]}x{size[1]} class ids")
        return img

    def load_raw_labels(self, i: int) -> np.ndarray:
        """The uint32 SemanticKITTI labels (instance << 16 | class) of frame i."""
        i = self._check_index(i)
        if not self.has_labels:
            raise DatasetError(f"{self.seq_dir}: no labels/ folder; this sequence has no per-point labels")
        path = self._labels[i]
        raw = np.fromfile(path, dtype=np.uint32)
        points = scan_point_count(self._scans[i])
        if raw.size != points or path.stat().st_size % 4:
            raise DatasetError(
                f"{path}: has {raw.size} labels but {self._scans[i].name} has {points} points; "
                "expected one uint32 label per point"
            )
        return raw

    def load_labels(self, i: int) -> np.ndarray:
        return semantic_kitti_to_common(self.load_raw_labels(i))
