"""Sensor models of the synthetic town's LiDAR (numpy only): KITTI's Velodyne HDL-64E S2 and the idealised one.

``HDL64E`` describes the sensor of KITTI (Geiger et al., "Vision meets Robotics: The KITTI Dataset", IJRR 2013:
one Velodyne HDL-64E on the roof of a VW Passat station wagon, 1.73 m above the ground, 10 Hz); each constant
names its source below and in docs/PROTOCOL.md ("LiDAR sensor model").  ``UNIFORM`` is the idealised sensor the
town used before (64 evenly spaced beams, no link budget, no glass, no ego vehicle, no motion); the renderer keeps
its code path byte for byte.

Frames: the sensor frame is KITTI's velo frame (x forward, y left, z up).  Column ``k`` of ``N`` looks at azimuth
``pi - 2 pi k / N`` (the sweep starts behind the car and turns clockwise seen from above, the Velodyne convention)
and is measured at ``t_k = (k / N - 1/2) * sweep_period`` relative to the frame time, when the sensor looks
forward: KITTI triggers its cameras at that moment (KITTI odometry devkit readme.txt).

Motion: KITTI odometry's scans are de-skewed.  Its devkit readme says the Velodyne's continuous measurement "has
been eliminated from this postprocessed data by compensating for the egomotion!! Note that this is in contrast
to the raw data" (the raw devkit asks users to "untwist" the points themselves); the compensation used the
GPS/IMU (Geiger et al., CVPR 2012, p. 2).  So ``hdl64e`` casts each column from the pose at its own time
(constant velocity from the drive's neighbouring poses) and then expresses every point in the sensor frame at
the frame time; a perfect compensation is assumed (the OXTS velocity error, ~0.05 km/h, moves points < 1 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EgoBox:
    """An axis-aligned box of the ego vehicle in the sensor frame (metres)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


def _hdl64e_elevations() -> tuple[float, ...]:
    """Nominal beam elevations (deg), top to bottom: 32 upper-block lasers 1/3 deg apart from +2 deg
    to -8.33 deg, 32 lower-block lasers evenly from -8.83 deg to -24.8 deg (0.515 deg apart).

    Block layout and spacings (1/3 deg upper, ~1/2 deg lower) from the HDL-64E S2 manual, the end points from
    its datasheet's vertical field of view (+2 to -24.8 deg).  Nominal values: each unit ships with its own
    per-laser calibration (db.xml; tenths of a degree off these, plus azimuth and origin offsets, not
    modelled), and the calibration of KITTI's unit is not published."""
    upper = 2.0 - np.arange(32) / 3.0
    lower = np.linspace(-8.0 - 5.0 / 6.0, -24.8, 32)
    return tuple(np.concatenate([upper, lower]).tolist())


@dataclass(frozen=True)
class LidarModel:
    """A spinning multi-beam LiDAR.  ``ideal`` selects the pre-HDL-64E code path (uniform: exactly the old output)."""

    name: str
    elevations_deg: tuple[float, ...]  # one per beam, top to bottom
    ideal: bool  # True: no link budget, glass, ego vehicle or motion (the idealised sensor)
    sweep_period_s: float = 0.1  # one revolution; KITTI records at 10 Hz (IJRR 2013, Sec. 2)
    min_range_m: float = 0.9  # no Velodyne returns closer than ~0.9 m (ros-drivers/velodyne issue #60)
    max_range_m: float = 120.0  # HDL-64E S2 datasheet: 120 m for cars and foliage (~0.80 reflectivity)
    range_noise_m: float = 0.02  # HDL-64E S2 datasheet: accuracy < 2 cm (1 sigma); the spec's bound is used
    reflectance_noise: float = 0.02  # 1-sigma noise on the reported reflectance (as the idealised sensor)
    random_dropout: float = 0.004  # returns lost for no modelled reason (as the idealised sensor)
    # link budget: the range at which half of the returns of a target of reflectivity rho are detected,
    # R50(rho) = range_low_m * (rho / rho_low) ** alpha, alpha fitted through the datasheet's two points
    # (50 m at ~0.10 "pavement", 120 m at ~0.80 "cars and foliage": alpha = ln(120/50) / ln(8) = 0.421)
    rho_low: float = 0.10
    range_low_m: float = 50.0
    rho_high: float = 0.80
    detection_sharpness: float = 12.0  # p_detect = 1 / (1 + (r / R50) ** k): 94 % at 0.8 R50, 10 % at 1.2 R50
    grazing_cos_scale: float = 0.03  # extra loss exp(-|cos i| / s) at glancing incidence (pulse stretching)
    # glass: a specular return only near normal incidence, p = min + (1 - min) |cos i| ** exponent;
    # otherwise the pulse passes through and the next surface answers (a second pane: no return)
    glass_return_min: float = 0.05
    glass_specular_exponent: float = 50.0  # |cos i| ** 50: 0.83 at 5 deg, 0.47 at 10 deg, 0.05 at 20 deg
    ego_boxes: tuple[EgoBox, ...] = ()  # rays into these boxes return nothing (the car's own body)
    deskewed: bool = True  # points expressed in the frame-time sensor frame (KITTI odometry), else raw

    @property
    def beams(self) -> int:
        return len(self.elevations_deg)

    @property
    def alpha(self) -> float:
        return float(np.log(self.max_range_m / self.range_low_m) / np.log(self.rho_high / self.rho_low))


# KITTI's car: VW Passat B6 station wagon (IJRR 2013), about 4.77 m x 1.82 m, 1.52 m high with its roof rails;
# the Velodyne sits 1.73 m above the ground (IJRR 2013, Fig. 3) at the front of the roof, about 2.0 m behind the
# front bumper (approximate: read off the published photos and sensor-setup figure, not measured).
# Two boxes: the body up to bonnet / beltline height (0.93 m above ground) and the cabin up to the roof rails
# (1.47 m): the lowest beams see the bonnet ahead and the roof behind: the nearest ground returns lie ~4.0 m
# to the sides, 4.3 m ahead and 10.5 m behind (3.75 m from the field of view alone), a ring-shaped blind zone.
# KITTI itself keeps a few returns on its roof and mirrors (dcmlr/groundgrid issue #12); they are dropped here.
PASSAT_BOXES = (
    EgoBox(lo=(-2.77, -0.91, -1.58), hi=(2.0, 0.91, -0.80)),
    EgoBox(lo=(-1.5, -0.6, -0.80), hi=(0.45, 0.6, -0.26)),
)

HDL64E = LidarModel(name="hdl64e", elevations_deg=_hdl64e_elevations(), ideal=False, ego_boxes=PASSAT_BOXES)
UNIFORM = LidarModel(
    name="uniform",
    elevations_deg=tuple(np.linspace(2.0, -24.8, 64).tolist()),
    ideal=True,
    range_noise_m=0.012,
    deskewed=True,
)
LIDAR_MODELS = {m.name: m for m in (HDL64E, UNIFORM)}


def lidar_model(name: str | LidarModel) -> LidarModel:
    """The model called ``name`` (hdl64e | uniform), or ``name`` itself when it already is a model."""
    if isinstance(name, LidarModel):
        return name
    if name not in LIDAR_MODELS:
        raise ValueError(f"unknown LiDAR model {name!r}; expected one of {', '.join(LIDAR_MODELS)}")
    return LIDAR_MODELS[name]


# --- geometry of one sweep -----------------------------------------------------------------------
def beam_directions(elevations_deg, azimuth_steps: int) -> np.ndarray:
    """(N * B, 3) float32 unit directions in the sensor frame, azimuth-major (one column of B beams after another)."""
    elev = np.deg2rad(np.asarray(elevations_deg, dtype=np.float64))
    az = np.pi - 2 * np.pi * np.arange(azimuth_steps) / azimuth_steps
    el, a = np.meshgrid(elev, az)
    return np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], -1).reshape(-1, 3).astype(np.float32)


def column_times(azimuth_steps: int, sweep_period_s: float) -> np.ndarray:
    """(N,) time of each column relative to the frame time (the sensor looking forward, column N/2)."""
    return (np.arange(azimuth_steps) / azimuth_steps - 0.5) * sweep_period_s


def ego_occlusion(dirs: np.ndarray, boxes: tuple[EgoBox, ...]) -> np.ndarray:
    """(M,) bool: the ray from the sensor origin along ``dirs`` (M, 3) enters one of ``boxes`` (slab test)."""
    d = np.asarray(dirs, dtype=np.float64)
    hit = np.zeros(len(d), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        for box in boxes:
            t0 = np.asarray(box.lo) * inv
            t1 = np.asarray(box.hi) * inv
            near = np.nan_to_num(np.minimum(t0, t1), nan=-np.inf).max(axis=1)
            far = np.nan_to_num(np.maximum(t0, t1), nan=np.inf).min(axis=1)
            hit |= (far >= np.maximum(near, 0.0)) & (far > 0)
    return hit


# --- link budget ---------------------------------------------------------------------------------
def half_detection_range(model: LidarModel, reflectivity: np.ndarray) -> np.ndarray:
    """R50: the range at which half the returns of a target of this (effective) reflectivity are detected."""
    rho = np.maximum(np.asarray(reflectivity, dtype=np.float64), 1e-4)
    return np.minimum(model.range_low_m * (rho / model.rho_low) ** model.alpha, model.max_range_m)


def detection_probability(
    model: LidarModel, range_m: np.ndarray, reflectivity: np.ndarray, cos_incidence: np.ndarray
) -> np.ndarray:
    """Probability that a return is reported: link budget x glancing-incidence loss x random dropout."""
    ratio = np.asarray(range_m, dtype=np.float64) / half_detection_range(model, reflectivity)
    p = 1.0 / (1.0 + ratio**model.detection_sharpness)
    p *= 1.0 - np.exp(-np.abs(np.asarray(cos_incidence, dtype=np.float64)) / model.grazing_cos_scale)
    return p * (1.0 - model.random_dropout)


def glass_return_probability(model: LidarModel, cos_incidence: np.ndarray) -> np.ndarray:
    """Probability that glass answers itself (specular, near normal incidence) instead of letting the pulse through."""
    c = np.abs(np.asarray(cos_incidence, dtype=np.float64))
    return model.glass_return_min + (1.0 - model.glass_return_min) * c**model.glass_specular_exponent


# --- ego motion ----------------------------------------------------------------------------------
def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices of rotation vectors (..., 3) (Rodrigues)."""
    w = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    K = np.zeros(w.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    small = theta < 1e-12
    a = np.where(small, 1.0, np.sin(theta) / np.where(small, 1.0, theta))
    b = np.where(small, 0.5, (1.0 - np.cos(theta)) / np.where(small, 1.0, theta**2))
    return np.eye(3) + a * K + b * (K @ K)


def so3_log(R: np.ndarray) -> np.ndarray:
    """(3,) rotation vector of a rotation matrix (angles below pi)."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    theta = float(np.arccos(cos))
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return v * (0.5 if theta < 1e-9 else theta / (2.0 * np.sin(theta)))


def ego_motion(T_town_velo: np.ndarray, times: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) of frame ``i`` of a drive: linear and angular velocity in the town frame, by central differences of
    the neighbouring poses (one-sided at the ends; zero for a single frame)."""
    n = len(T_town_velo)
    a, b = max(i - 1, 0), min(i + 1, n - 1)
    if a == b:
        return np.zeros(3), np.zeros(3)
    dt = float(times[b] - times[a])
    Ta, Tb = np.asarray(T_town_velo[a], dtype=np.float64), np.asarray(T_town_velo[b], dtype=np.float64)
    v = (Tb[:3, 3] - Ta[:3, 3]) / dt
    w = Ta[:3, :3] @ so3_log(Ta[:3, :3].T @ Tb[:3, :3]) / dt
    return v, w


def sweep_poses(T_town_velo: np.ndarray, motion, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensor pose at each column time under constant velocity ``motion = (v, w)`` (town frame):
    (R (N, 3, 3) town <- sensor, offset (N, 3) = origin - frame origin = v t)."""
    v, w = (np.asarray(x, dtype=np.float64) for x in motion)
    R0 = np.asarray(T_town_velo, dtype=np.float64)[:3, :3]
    R = so3_exp(w[None, :] * times[:, None]) @ R0
    return R, v[None, :] * times[:, None]
