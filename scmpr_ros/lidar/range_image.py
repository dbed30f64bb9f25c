"""Spherical projection of LiDAR points to a range image (numpy, vectorised).

Pixel of a point p = (x, y, z), r = |p|:  col = floor((1 - atan2(y, x) / pi) / 2 * W),
row = floor((fov_up - asin(z / r)) / (fov_up - fov_down) * H); the nearest point wins a pixel.
Normals: mean of the cross products of the four (right, down, left, up) neighbour pairs whose range
is within ``NORMAL_MAX_REL_JUMP`` of the centre, oriented towards the sensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from scmpr_ros.config import CameraConfig, LidarConfig
from scmpr_ros.errors import InputError
from scmpr_ros.semantics import IGNORE_ID

# Channels of encoder_input(), in order. The LiDAR encoder is built with RANGE_CHANNELS inputs.
CHANNEL_NAMES: tuple[str, ...] = ("range", "z", "reflectance", "normal_x", "normal_y", "normal_z", "valid")
RANGE_CHANNELS: int = len(CHANNEL_NAMES)
Z_SCALE_M = 10.0  # height channel = z / Z_SCALE_M
NORMAL_MAX_REL_JUMP = 0.25  # neighbour used for normals if |r_n - r| <= this * r


@dataclass
class RangeImage:
    """An (H, W) range image; invalid pixels hold 0 (labels: IGNORE_ID, point_index: -1)."""

    range: np.ndarray  # (H, W) float32 metres
    xyz: np.ndarray  # (H, W, 3) float32, sensor frame
    reflectance: np.ndarray  # (H, W) float32
    normals: np.ndarray  # (H, W, 3) float32 unit (0 where unknown)
    labels: np.ndarray  # (H, W) uint8 common class ids
    valid: np.ndarray  # (H, W) bool
    point_index: np.ndarray  # (H, W) int64 index into the projected points (-1 where empty)
    col_offset: int = 0  # first column of this image in the full 360 degree image
    full_width: int = 0  # width of the full 360 degree image

    @property
    def height(self) -> int:
        return int(self.range.shape[0])

    @property
    def width(self) -> int:
        return int(self.range.shape[1])

    @property
    def fill_ratio(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the valid pixels."""
        return np.nonzero(self.valid)

    def points(self) -> np.ndarray:
        """(K, 3) xyz of the valid pixels, row-major order (the inverse of the projection)."""
        return self.xyz[self.valid]


def range_image_from_pixels(
    height: int,
    width: int,
    pixels: np.ndarray,
    ranges: np.ndarray,
    xyz: np.ndarray,
    reflectance: np.ndarray | None,
    labels: np.ndarray | None,
    sources: np.ndarray,
) -> RangeImage:
    """A full-width range image from the points kept per pixel: ``pixels`` (K,) distinct flat pixel ids
    (row * width + col), each one's range, xyz (K, 3), reflectance and label (or None: 0 / IGNORE_ID)
    and source point index; normals are estimated from the assembled image."""
    size = height * width
    rng = np.zeros(size, dtype=np.float32)
    rng[pixels] = ranges
    xyz_flat = np.zeros((size, 3), dtype=np.float32)
    xyz_flat[pixels] = xyz
    refl = np.zeros(size, dtype=np.float32)
    if reflectance is not None:
        refl[pixels] = reflectance
    lab = np.full(size, IGNORE_ID, dtype=np.uint8)
    if labels is not None:
        lab[pixels] = labels
    point_index = np.full(size, -1, dtype=np.int64)
    point_index[pixels] = sources
    rng2, xyz2, valid = rng.reshape(height, width), xyz_flat.reshape(height, width, 3), (point_index >= 0)
    valid2 = valid.reshape(height, width)
    return RangeImage(
        range=rng2,
        xyz=xyz2,
        reflectance=refl.reshape(height, width),
        normals=estimate_normals(xyz2, rng2, valid2, wrap=True),
        labels=lab.reshape(height, width),
        valid=valid2,
        point_index=point_index.reshape(height, width),
        col_offset=0,
        full_width=width,
    )


class RangeProjector:
    """Projects scans with the geometry of ``LidarConfig``."""

    def __init__(self, cfg: LidarConfig | None = None):
        cfg = cfg if cfg is not None else LidarConfig()
        if cfg.range_height < 2 or cfg.range_width < 4:
            raise InputError(
                f"lidar.range_height/range_width = {cfg.range_height}x{cfg.range_width}: need at least 2x4"
            )
        if not cfg.fov_up_deg > cfg.fov_down_deg:
            raise InputError(
                f"lidar.fov_up_deg ({cfg.fov_up_deg}) must be above lidar.fov_down_deg ({cfg.fov_down_deg})"
            )
        if not 0 <= cfg.min_range_m < cfg.max_range_m:
            raise InputError(
                f"lidar.min_range_m ({cfg.min_range_m}) must be >= 0 and below lidar.max_range_m ({cfg.max_range_m})"
            )
        self.cfg = cfg
        self.H = int(cfg.range_height)
        self.W = int(cfg.range_width)
        self.fov_up = math.radians(cfg.fov_up_deg)
        self.fov_down = math.radians(cfg.fov_down_deg)
        self.fov = self.fov_up - self.fov_down

    # -- pixel geometry -------------------------------------------------------------------
    def pixel_coords(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, ranges, in_view) of (M, 3) points; rows/cols are only meaningful where in_view."""
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        r = np.sqrt(x * x + y * y + z * z)
        with np.errstate(invalid="ignore", divide="ignore"):
            yaw = np.arctan2(y, x)
            pitch = np.arcsin(np.clip(z / r, -1.0, 1.0))
        colf = (0.5 * (1.0 - yaw / np.pi)) * self.W
        rowf = (self.fov_up - pitch) / self.fov * self.H
        in_view = (
            np.isfinite(r) & (r >= self.cfg.min_range_m) & (r <= self.cfg.max_range_m) & (rowf >= 0) & (rowf < self.H)
        )
        rows = np.floor(np.where(in_view, rowf, 0)).astype(np.int64)
        cols = np.floor(np.where(in_view, colf, 0)).astype(np.int64) % self.W
        return rows, cols, r, in_view

    def column_yaw(self, cols: np.ndarray | float) -> np.ndarray:
        """Yaw (rad, sensor frame, left positive) of the centre of column(s) of the full image."""
        return np.pi * (1.0 - 2.0 * (np.asarray(cols, dtype=np.float64) + 0.5) / self.W)

    def row_pitch(self, rows: np.ndarray | float) -> np.ndarray:
        return self.fov_up - (np.asarray(rows, dtype=np.float64) + 0.5) / self.H * self.fov

    # -- projection -----------------------------------------------------------------------
    def project(self, points: np.ndarray, labels: np.ndarray | None = None) -> RangeImage:
        """Project (M, 3) or (M, 4: x y z reflectance) points; labels (M,) uint8 common ids or None."""
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise InputError(f"points must be (M, 3) or (M, 4) x,y,z[,reflectance], got shape {pts.shape}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (pts.shape[0],):
                raise InputError(f"labels must be ({pts.shape[0]},) to match the points, got {labels.shape}")
        H, W = self.H, self.W
        xyz_all = pts[:, :3].astype(np.float32, copy=False)
        rows, cols, r, ok = self.pixel_coords(xyz_all)
        idx = np.flatnonzero(ok)
        lin = rows[idx] * W + cols[idx]
        # nearest wins: sort by (pixel, range) with one float64 key, keep the first of each pixel
        key = lin.astype(np.float64) + r[idx].astype(np.float64) / (self.cfg.max_range_m * 1.001 + 1e-9)
        order = np.argsort(key, kind="quicksort")
        lin_s = lin[order]
        first = np.empty(lin_s.shape, dtype=bool)
        if lin_s.size:
            first[0] = True
            np.not_equal(lin_s[1:], lin_s[:-1], out=first[1:])
        win = idx[order[first]]
        pix = lin_s[first]

        return range_image_from_pixels(
            H,
            W,
            pix,
            r[win],
            xyz_all[win],
            pts[win, 3] if pts.shape[1] == 4 else None,
            labels[win] if labels is not None else None,
            win,
        )

    def crop_columns(self, yaw_rad: float, hfov_rad: float) -> np.ndarray:
        """Column indices of the full image covering [yaw - hfov/2, yaw + hfov/2], left to right."""
        return _crop_columns(self.W, yaw_rad, hfov_rad)


def _crop_columns(full_width: int, yaw_rad: float, hfov_rad: float) -> np.ndarray:
    if not (0 < hfov_rad <= 2 * np.pi):
        raise InputError(f"horizontal field of view must be in (0, 2*pi] rad, got {hfov_rad}")
    width = max(1, int(round(hfov_rad / (2 * np.pi) * full_width)))
    centre = 0.5 * (1.0 - yaw_rad / np.pi) * full_width  # continuous column of the centre yaw
    start = int(round(centre - width / 2.0))
    return (start + np.arange(width)) % full_width


def crop_to_fov(ri: RangeImage, yaw_rad: float, hfov_rad: float) -> RangeImage:
    """Columns of a full 360 degree range image within hfov around yaw (rad, left positive); wraps at +-pi."""
    full = ri.full_width or ri.width
    if ri.col_offset != 0 or ri.width != full:
        raise InputError("crop_to_fov needs a full 360 degree range image, got an image that is already cropped")
    cols = _crop_columns(full, yaw_rad, hfov_rad)
    return replace(
        ri,
        range=ri.range[:, cols],
        xyz=ri.xyz[:, cols],
        reflectance=ri.reflectance[:, cols],
        normals=ri.normals[:, cols],
        labels=ri.labels[:, cols],
        valid=ri.valid[:, cols],
        point_index=ri.point_index[:, cols],
        col_offset=int(cols[0]),
        full_width=full,
    )


def camera_fov(camera: CameraConfig, T_cam_velo: np.ndarray | None = None) -> tuple[float, float]:
    """(yaw, hfov) in radians of the camera's horizontal field of view seen from the LiDAR frame.

    hfov = atan(cx/fx) + atan((width - cx)/fx); the centre yaw is the optical axis yaw in the LiDAR
    frame (from T_cam_velo, 0 if None) shifted by the asymmetry of cx.
    """
    if camera.fx <= 0 or camera.width <= 0 or not (0 <= camera.cx <= camera.width):
        raise InputError(
            f"camera fx={camera.fx}, width={camera.width}, cx={camera.cx}: need fx > 0, width > 0, 0 <= cx <= width"
        )
    left = math.atan(camera.cx / camera.fx)
    right = math.atan((camera.width - camera.cx) / camera.fx)
    yaw = 0.0
    if T_cam_velo is not None:
        R = np.asarray(T_cam_velo, dtype=np.float64)[:3, :3]
        axis = R.T @ np.array([0.0, 0.0, 1.0])  # optical axis in the LiDAR frame
        yaw = math.atan2(axis[1], axis[0])
    # image x to the right = yaw decreasing; centre of [yaw+left, yaw-right]
    return yaw + 0.5 * (left - right), left + right


def estimate_normals(xyz: np.ndarray, rng: np.ndarray, valid: np.ndarray, wrap: bool = True) -> np.ndarray:
    """Per-pixel unit normals (H, W, 3) from range-image neighbours (see module docstring)."""
    H, W = rng.shape
    P = [np.ascontiguousarray(xyz[..., k], dtype=np.float32) for k in range(3)]
    rng = rng.astype(np.float32, copy=False)
    tol = NORMAL_MAX_REL_JUMP * rng

    def shifted(a: np.ndarray, dr: int, dc: int, fill) -> np.ndarray:
        out = np.roll(a, shift=(-dr, -dc), axis=(0, 1))  # out[i, j] = a[i + dr, j + dc]
        if dr > 0:
            out[H - dr :] = fill
        elif dr < 0:
            out[:-dr] = fill
        if not wrap:
            if dc > 0:
                out[:, W - dc :] = fill
            elif dc < 0:
                out[:, :-dc] = fill
        return out

    neigh = {}
    for name, (dr, dc) in {"r": (0, 1), "d": (1, 0), "l": (0, -1), "u": (-1, 0)}.items():
        ok = shifted(valid, dr, dc, False) & valid & (np.abs(shifted(rng, dr, dc, 0.0) - rng) <= tol)
        neigh[name] = ([shifted(c, dr, dc, 0.0) - c for c in P], ok)
    acc = [np.zeros((H, W), dtype=np.float32) for _ in range(3)]
    for a, b in (("r", "d"), ("d", "l"), ("l", "u"), ("u", "r")):
        (ax, ay, az), oka = neigh[a]
        (bx, by, bz), okb = neigh[b]
        n = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)
        # orient towards the sensor; unnormalised sums weight the four pairs by their spanned area
        sign = np.where(n[0] * P[0] + n[1] * P[1] + n[2] * P[2] > 0, -1.0, 1.0).astype(np.float32)
        sign[~(oka & okb)] = 0.0
        for k in range(3):
            acc[k] += sign * n[k]
    norm = np.sqrt(acc[0] * acc[0] + acc[1] * acc[1] + acc[2] * acc[2])
    good = norm > 1e-9
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=good)
    return np.stack([a * inv for a in acc], axis=-1)


def encoder_input(ri: RangeImage, cfg: LidarConfig | None = None) -> np.ndarray:
    """(RANGE_CHANNELS, H, W) float32: range/max_range, z/10 m, reflectance, normals, valid mask."""
    max_range = cfg.max_range_m if cfg is not None else LidarConfig().max_range_m
    out = np.empty((RANGE_CHANNELS, ri.height, ri.width), dtype=np.float32)
    v = ri.valid
    out[0] = np.where(v, ri.range / max_range, 0.0)
    out[1] = np.where(v, ri.xyz[..., 2] / Z_SCALE_M, 0.0)
    out[2] = np.where(v, ri.reflectance, 0.0)
    out[3:6] = np.where(v[None], np.moveaxis(ri.normals, -1, 0), 0.0)
    out[6] = v
    return out
