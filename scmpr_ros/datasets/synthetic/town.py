"""The synthetic town in memory: layout + mesh + two drives + sensors, all from one seed.

KITTI geometry: the camera is KITTI's image_2 (P2 of odometry sequences 00-02, scaled to the image
size) and the LiDAR -> camera-0 transform is their Tr (rotation re-orthonormalised); the LiDAR is
1.73 m above flat ground.  Poses are ``T_town_velo``; the dataset's world frame (``map``) is the
LiDAR frame of the first mapping-pass pose: ``T_map_town = T_town_velo[0]^-1``.  The LiDAR is the
``lidar`` sensor model (``lidar_model.py``: ``hdl64e`` by default, ``uniform`` the idealised one); the
HDL-64E sweeps while the car moves, with the velocity of the drive at that frame (``lidar_model.ego_motion``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scmpr_ros.datasets.base import Calibration
from scmpr_ros.datasets.synthetic import lidar_model as lm
from scmpr_ros.datasets.synthetic.layout import MAP_LANE_C, VELO_HEIGHT_M, RoutePath, TownBuilder, plan_layout
from scmpr_ros.datasets.synthetic.render import CameraHits, TownRenderer
from scmpr_ros.geometry import invert_pose

KITTI_IMAGE_SIZE = (1241, 376)
_K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
_P_COL4 = {  # 4th columns of KITTI odometry P0..P3 (sequences 00-02)
    "P0": np.array([0.0, 0.0, 0.0]),
    "P1": np.array([-386.1448, 0.0, 0.0]),
    "P2": np.array([45.38225, -0.1130887, 0.003779761]),
    "P3": np.array([-337.2877, 2.369057, 0.004915215]),
}
_TR = np.array(
    [
        [4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
        [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
        [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
    ]
)
FRAME_PERIOD_S = 0.1


@dataclass(frozen=True)
class SynthCalib:
    P: dict  # "P0".."P3": (3,4)
    Tr: np.ndarray  # (4,4) velo -> cam0
    K: np.ndarray  # image_2 intrinsics
    T_cam2_cam0: np.ndarray
    image_size: tuple[int, int]

    @property
    def T_cam_velo(self) -> np.ndarray:
        return self.T_cam2_cam0 @ self.Tr

    def calibration(self) -> Calibration:
        return Calibration(
            K=self.K.copy(), P=self.P["P2"].copy(), T_cam_velo=self.T_cam_velo, image_size=self.image_size
        )


def kitti_calib(image_size: tuple[int, int] = KITTI_IMAGE_SIZE) -> SynthCalib:
    w, h = int(image_size[0]), int(image_size[1])
    if w < 16 or h < 16:
        raise ValueError(f"image size must be at least 16x16, got {w}x{h}")
    S = np.diag([w / KITTI_IMAGE_SIZE[0], h / KITTI_IMAGE_SIZE[1], 1.0])
    K0 = _K.copy()
    P = {}
    for key, col in _P_COL4.items():
        P[key] = S @ np.concatenate([K0, col[:, None]], axis=1)
    K = P["P2"][:, :3].copy()
    U, _, Vt = np.linalg.svd(_TR[:, :3])
    Tr = np.eye(4)
    Tr[:3, :3] = U @ Vt
    Tr[:3, 3] = _TR[:, 3]
    T_c2_c0 = np.eye(4)
    T_c2_c0[:3, 3] = np.linalg.solve(K, P["P2"][:, 3])
    return SynthCalib(P=P, Tr=Tr, K=K, T_cam2_cam0=T_c2_c0, image_size=(w, h))


@dataclass
class DrivePass:
    name: str  # "map" | "query"
    T_town_velo: np.ndarray  # (N,4,4)
    times: np.ndarray  # (N,)
    s: np.ndarray  # route arclength of each frame
    c: np.ndarray  # lateral offset (left +) from the route centre line
    reverse: np.ndarray  # (N,) bool: driven against the mapping direction

    def __len__(self) -> int:
        return len(self.times)


def _spacings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frame spacing in metres: a smooth speed profile within 1.0-2.0 m (10-20 m/s at 10 Hz)."""
    k = np.arange(n)
    ph = rng.uniform(0, 2 * np.pi, 3)
    sp = (
        1.5
        + 0.3 * np.sin(2 * np.pi * k / rng.uniform(60, 140) + ph[0])
        + 0.15 * np.sin(2 * np.pi * k / rng.uniform(15, 35) + ph[1])
    )
    return np.clip(sp + rng.normal(0, 0.04, n), 1.0, 2.0)


def _times(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.arange(n) * FRAME_PERIOD_S + np.concatenate([[0.0], rng.uniform(-0.002, 0.002, max(n - 1, 0))])


def _poses(xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    T = np.zeros((len(xy), 4, 4))
    c, s = np.cos(yaw), np.sin(yaw)
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
    T[:, 2, 2] = 1.0
    T[:, :2, 3] = xy
    T[:, 2, 3] = VELO_HEIGHT_M
    T[:, 3, 3] = 1.0
    return T


def _sample_dense(route: RoutePath, sc: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames along a dense (s, c) path at the given spacings: (xy, yaw, index into sc)."""
    xy, _ = route.at(sc[:, 0], sc[:, 1])
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    g = np.gradient(xy, axis=0)
    yaw = np.unwrap(np.arctan2(g[:, 1], g[:, 0]))
    targets = np.concatenate([[0.0], np.cumsum(spacing)])
    targets = targets[targets <= dist[-1]]
    fx = np.interp(targets, dist, xy[:, 0])
    fy = np.interp(targets, dist, xy[:, 1])
    fyaw = np.interp(targets, dist, yaw)
    fi = np.clip(np.searchsorted(dist, targets), 0, len(sc) - 1)
    return np.stack([fx, fy], 1), fyaw, fi


def plan_query(rng: np.random.Generator, route: RoutePath, s_lo: float, s_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense (s, c) path of the query drive and a per-point 'reverse' flag.

    Forward 1-2 m left of the mapping lane, a U-turn, back 1-2 m right of it, a U-turn, forward
    again; short routes are driven once in the opposite direction.  U-turns avoid the corners.
    """
    step = 0.1
    length = s_hi - s_lo

    def safe(s: float) -> bool:
        return all(s < a0 - 10 or s > a1 + 10 for a0, a1 in route.arcs)

    def near_safe(s: float, lo: float, hi: float) -> float | None:
        for k in range(400):
            for cand in (s + 0.5 * k, s - 0.5 * k):
                if lo <= cand <= hi and safe(cand):
                    return cand
        return None

    def c_fwd() -> float:
        return MAP_LANE_C + rng.uniform(1.2, 1.8)

    def c_rev() -> float:
        return MAP_LANE_C - rng.uniform(1.2, 1.8)

    def straight(s0: float, s1: float, c: float) -> np.ndarray:
        n = max(int(abs(s1 - s0) / step), 2)
        s = np.linspace(s0, s1, n)
        wob = 0.12 * np.sin(s / rng.uniform(9, 20) + rng.uniform(0, 6.3))
        return np.stack([s, c + wob], 1)

    def uturn(s: float, ca: float, cb: float, direction: float) -> tuple[np.ndarray, np.ndarray]:
        """Half circle from (s, ca) to (s, cb) bulging towards ``direction``; flag = heading now reversed."""
        mid, r = (ca + cb) / 2, abs(ca - cb) / 2
        phi = np.linspace(0, np.pi, max(int(np.pi * r / step), 8))[1:-1]
        pts = np.stack([s + direction * r * np.sin(phi), mid + (ca - mid) * np.cos(phi)], 1)
        past_half = phi > np.pi / 2
        return pts, past_half if direction > 0 else ~past_half

    pieces, rev = [], []
    s1 = s_lo + rng.uniform(1.0, 5.0)
    s2 = near_safe(s1 + 0.55 * length, s1 + 20, s_hi - 4) if length >= 70 else None
    s3 = near_safe(s2 - 0.22 * length, s_lo + 4, s2 - 15) if s2 is not None else None
    if s2 is not None and s3 is not None:
        c1, c2, c3 = c_fwd(), c_rev(), c_fwd()
        a = straight(s1, s2, c1)
        b = straight(s2, s3, c2)
        remaining = length - (s2 - s1) - (s2 - s3)
        c = straight(s3, min(s3 + max(remaining, 10.0), s_hi - 1.0), c3)
        u1, f1 = uturn(s2, a[-1, 1], b[0, 1], 1.0)
        u2, f2 = uturn(s3, b[-1, 1], c[0, 1], -1.0)
        parts = [(a, False), (u1, f1), (b, True), (u2, f2), (c, False)]
    else:
        parts = [(straight(s_hi - 1.0, s_lo + 1.0, c_rev()), True)]
    for arr, flag in parts:
        pieces.append(arr)
        rev.append(np.broadcast_to(np.asarray(flag, dtype=bool), (len(arr),)))
    return np.concatenate(pieces), np.concatenate(rev)


class SyntheticTown:
    """Everything the writer needs, deterministic for ``seed``; usable in memory (tests, demos)."""

    def __init__(
        self,
        seed: int = 0,
        frames: int = 200,
        image_size: tuple[int, int] = KITTI_IMAGE_SIZE,
        azimuth_steps: int = 2000,
        lidar: str | lm.LidarModel = "hdl64e",
    ):
        if frames < 2:
            raise ValueError(f"frames must be >= 2, got {frames}")
        self.seed = int(seed)
        self.frames = int(frames)
        self.calib = kitti_calib(image_size)
        self.image_size = self.calib.image_size
        self.azimuth_steps = int(azimuth_steps)
        self.lidar = lm.lidar_model(lidar)
        rng_pass = np.random.default_rng([self.seed, 1])
        spacing = _spacings(rng_pass, self.frames - 1)
        s0 = 6.0
        map_len = float(spacing.sum())
        # the lane is offset from the centre line, so corners change its length: plan with a margin
        self.layout = plan_layout(np.random.default_rng([self.seed, 2]), s0 + 1.25 * map_len + 20.0)
        builder = TownBuilder(np.random.default_rng([self.seed, 3]), self.layout)
        builder.populate()
        self.mesh = builder.mb.arrays()
        self.lamps = np.asarray(builder.lamps).reshape(-1, 3)
        route = self.layout.route

        # mapping pass: right lane with small lateral and steering wobble, spacing along the lane itself
        s_dense = np.arange(s0, route.length - 1.0, 0.1)
        c_dense = MAP_LANE_C + 0.08 * np.sin(s_dense / rng_pass.uniform(12, 30) + rng_pass.uniform(0, 6.3))
        xy, yaw, fi = _sample_dense(route, np.stack([s_dense, c_dense], 1), spacing)
        if len(xy) != self.frames:
            raise RuntimeError(
                f"route too short for {self.frames} frames ({len(xy)})"
            )  # planning margin makes this unreachable
        yaw = yaw + 0.008 * np.sin(np.arange(self.frames) / rng_pass.uniform(5, 12) + rng_pass.uniform(0, 6.3))
        self.map_pass = DrivePass(
            "map", _poses(xy, yaw), _times(rng_pass, self.frames), s_dense[fi], c_dense[fi], np.zeros(self.frames, bool)
        )

        # query pass: same streets, 1-2 m aside, partly reversed; similar length
        rng_q = np.random.default_rng([self.seed, 4])
        sc, rev = plan_query(rng_q, route, float(self.map_pass.s[0]), float(self.map_pass.s[-1]))
        qspacing = _spacings(rng_q, int(self.frames * 1.3) + 10)
        qxy, qyaw, qi = _sample_dense(route, sc, qspacing)
        qn = len(qxy)
        self.query_pass = DrivePass("query", _poses(qxy, qyaw), _times(rng_q, qn), sc[qi, 0], sc[qi, 1], rev[qi])

        self.T_map_town = invert_pose(self.map_pass.T_town_velo[0])
        el = np.deg2rad(np.random.default_rng([self.seed, 5]).uniform(30, 55))
        az = np.random.default_rng([self.seed, 6]).uniform(0, 2 * np.pi)
        self.sun_dir = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        self.renderer = TownRenderer(
            self.mesh,
            self.lamps,
            self.calib.K,
            self.image_size,
            self.azimuth_steps,
            self.sun_dir,
            self.seed,
            lidar=self.lidar,
        )

    # --- per-frame sensors -------------------------------------------------------------------------
    def drive(self, name: str) -> DrivePass:
        if name not in ("map", "query"):
            raise ValueError(f"unknown pass {name!r}; expected 'map' or 'query'")
        return self.map_pass if name == "map" else self.query_pass

    def poses_map(self, name: str) -> np.ndarray:
        """T_map_velo of a pass (what the KITTI loader returns as ``poses_velo``)."""
        return self.T_map_town @ self.drive(name).T_town_velo

    def T_town_cam(self, T_town_velo: np.ndarray) -> np.ndarray:
        return T_town_velo @ invert_pose(self.calib.T_cam_velo)

    def frame_rng(self, name: str, i: int, what: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 100 + (name == "query"), int(i), what])

    def cast_camera(self, name: str, i: int) -> CameraHits:
        return self.renderer.cast_camera(self.T_town_cam(self.drive(name).T_town_velo[i]))

    def render_image(self, name: str, i: int, condition: str = "day", hits: CameraHits | None = None) -> np.ndarray:
        hits = hits if hits is not None else self.cast_camera(name, i)
        cond_id = {"day": 0, "night": 1, "winter": 2}[condition]
        return self.renderer.shade(
            hits, condition, self.drive(name).T_town_velo[i], self.frame_rng(name, i, 10 + cond_id)
        )

    def class_image(self, name: str, i: int, hits: CameraHits | None = None) -> np.ndarray:
        """(H, W) uint8 common class per pixel of the image_2 camera (IGNORE_ID = sky)."""
        hits = hits if hits is not None else self.cast_camera(name, i)
        return self.renderer.class_image(hits)

    def ego_motion(self, name: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(v, w): linear and angular velocity (town frame) of frame ``i``, from the neighbouring poses."""
        drive = self.drive(name)
        return lm.ego_motion(drive.T_town_velo, drive.times, i)

    def scan(self, name: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(points (M,4) float32 in the velo frame, uint32 SemanticKITTI labels)."""
        motion = None if self.lidar.ideal else self.ego_motion(name, i)
        return self.renderer.scan(self.drive(name).T_town_velo[i], self.frame_rng(name, i, 1), motion)
