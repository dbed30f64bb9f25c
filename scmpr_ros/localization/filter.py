"""Monte Carlo localization over the LiDAR map: fuses per-frame place-recognition hypotheses with motion.

State.  P particles ``x_i = (x, y, yaw)`` in the map frame, weights ``w_i`` (sum 1) and a speed ``v_i``
(m/s, used only by the image-only motion).

Motion with odometry (:meth:`MapLocalizationFilter.predict_odometry`).  A body-frame increment
``u = (dx, dy, dyaw)`` of the previous pose (:func:`body_delta` of two odometry poses) is perturbed per
particle, with noise growing with the distance ``d`` and the turn, and composed with it::

    s_t = a_t d + b_t,   s_r = a_r |dyaw| + a_h d + b_r                      (odom_noise_*, odom_floor_*)
    (dx', dy') = (dx, dy) + N(0, s_t^2 I),   dyaw' = dyaw + N(0, s_r^2)
    (x, y) += R(yaw) (dx', dy'),   yaw <- wrap(yaw + dyaw')

Motion without odometry (:meth:`MapLocalizationFilter.predict_graph`).  The map's viewpoints lie along
driven roads, so a particle drives on in its own direction and is put back onto the road it is on::

    v <- clip(v + N(0, (q dt)^2), 0, v_max)
    then, in n = ceil(v dt / step) substeps of h = dt / n each:
    yaw' = yaw + N(0, s_yaw^2 h),   (x, y) += v h (cos yaw', sin yaw')
    j = nearest viewpoint within r_snap whose heading is within the gate of yaw'   (both directions of
        a road are different viewpoints, so particles keep their direction)
    yaw <- yaw' + g_h wrap(yaw_j - yaw'),   l = n_j . ((x, y) - p_j),   n_j = (-sin yaw_j, cos yaw_j)
    (x, y) += (clip((1 - g_l) l, -l_max, l_max) - l) n_j        (lateral offset from j's line, bounded)
The heading noise makes particles take every branch at a junction; the measurements then pick one.
Before driving, a particle turns around on the spot with probability ``u dt`` (graph_uturn_rate_hz):
vehicles turn at dead ends and after missed turns, and the particles that did so are already in place
when the images show the other direction, so the filter needs fewer particles redrawn from the
hypotheses (which also pull it toward the same street seen from its other end).
A particle with no such viewpoint random-walks: ``(x, y) += N(0, s_lost^2 h I)``, ``yaw += N(0, s_ly^2 h)``.

Measurement (:meth:`MapLocalizationFilter.update`).  A frame's hypotheses are viewpoint ids ``c_j`` with
scores ``s_j``.  Each gets the relative likelihood ``L_j = exp((s_j - max_k s_k) / T)``; a particle takes
its best candidate within ``r_match`` and the heading gate, softened with distance, never below the floor::

    p(z | x_i) = max(f, max_j L_j exp(-|p_i - p_j|^2 / (2 sigma^2)) [|p_i - p_j| <= r_match, |yaw_i - yaw_j| <= gate])
    w_i <- w_i p(z | x_i) / sum_k w_k p(z | x_k)
Only candidates with ``L_j > f`` and particles in a grid cell around them are evaluated (a (P, k') array,
k' <= k <= 50), so the update costs O(P k) whatever the map size N; the road lookups of the image-only
motion go through a uniform-grid spatial hash (:class:`ViewpointIndex`) whose cost depends on the local
viewpoint density, not on N, and particles sharing a 1 m cell and a 15 deg heading sector share a lookup.

Resampling and recovery.  When the effective sample size ``1 / sum w_i^2`` drops below P/2, low-variance
(systematic) resampling.  Then, every frame, a share ``rho`` of the particles (the lightest) is redrawn
around the top-k hypothesis poses with weight 1/P each, the others keeping ``1 - rho`` of the weight
(augmented MCL; ``rho`` = recovery_share / recovery_share_image_only when converged, otherwise
recovery_share_unconverged / recovery_share_unconverged_image_only, after an odometry / a road-graph
update): a wrong lock or a kidnapped vehicle recovers once the recognizer agrees with itself over a
few frames.  The floor ``f`` and the shares trade the two failure modes against each other: a high
floor and small shares hold a lock through a run of frames that all match one wrong place (a street
seen from its other end, a mirror-image block), and slow the recovery after a kidnapping; odometry
holds a lock well, so with it the floor is higher (likelihood_floor vs likelihood_floor_image_only).

Estimate.  Particles are binned on a grid of cell ``R`` (cluster_radius_m); around the weighted means of
the few heaviest cells the weight within ``R`` is summed, and the heaviest is the mode.  The pose is the
weighted mean of the mode's particles (circular mean for yaw), the covariance their weighted covariance;
``mode_weight`` is their share of the weight, ``spread_m`` the weighted RMS distance of all particles to
the pose.  ``converged`` holds when, for converge_frames consecutive frames (converge_frames_image_only
after a road-graph update), the mode was tight (RMS radius <= converge_radius_m), heavy (mode_weight >=
converge_mode_weight) and the same cluster (half its weight was in the previous mode), and a hypothesis
supported it (likelihood above the floor for half its weight) within the last converge_support_frames
frames.

numpy, and one numba kernel for the (P, k') measurement loop; no rclpy, no torch.  Settings:
:class:`scmpr_ros.config.FilterConfig` (section ``filter``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from scmpr_ros.config import FilterConfig
from scmpr_ros.errors import InputError
from scmpr_ros.geometry import heading_of, wrap_angle

_Z_VAR = 0.25  # m^2: fixed variance of z in the covariance (the map gives z, the filter does not estimate it)
_TILT_VAR = float(np.radians(2.0) ** 2)  # rad^2: fixed variance of roll and pitch
_MIN_XY_VAR = 0.01  # m^2: floor on the x / y variance so the covariance stays positive definite
_MIN_YAW_VAR = 1e-4  # rad^2: floor on the yaw variance
_MODE_CANDIDATES = 3  # heaviest grid cells tried as the mode's centre
_SAME_MODE_SHARE = 0.5  # share of the mode's weight that must have been in the previous mode
_CELL_BIAS = 1 << 20  # cell coordinates in [-2^20, 2^20) get distinct keys (5000 km at 5 m cells)
_CELL_STRIDE = 2 * _CELL_BIAS  # key = (cx + bias) * stride + (cy + bias)
_TWO_PI = 2.0 * np.pi


@njit(cache=True, nogil=True)
def _best_log_likelihood(px, py, pcos, psin, cx, cy, ccos, csin, clog, radius2, cos_gate, inv_two_sigma2):
    """(P,) max over candidates j within radius and heading gate of clog_j - d_ij^2 / (2 sigma^2); -inf: none.

    The heading test is cos(yaw_i - yaw_j) = cos_i cos_j + sin_i sin_j >= cos(gate).  One pass over the
    (P, k) pairs without temporaries (the measurement update's inner loop)."""
    out = np.full(px.shape[0], -np.inf)
    for i in range(px.shape[0]):
        best = -np.inf
        for j in range(cx.shape[0]):
            dx = px[i] - cx[j]
            dy = py[i] - cy[j]
            dist2 = dx * dx + dy * dy
            if dist2 <= radius2 and pcos[i] * ccos[j] + psin[i] * csin[j] >= cos_gate:
                score = clog[j] - dist2 * inv_two_sigma2
                if score > best:
                    best = score
        out[i] = best
    return out


def _finite_array(value, name: str, shape_text: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric {shape_text}, got {type(value).__name__}") from exc
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values; give finite numbers {shape_text}")
    return array


def _pose_xyyaw(pose, name: str) -> np.ndarray:
    pose = _finite_array(pose, name, "(4,4) or (3,) x, y, yaw")
    if pose.shape == (4, 4):
        return np.array([pose[0, 3], pose[1, 3], np.arctan2(pose[1, 0], pose[0, 0])])
    if pose.shape == (3,):
        return pose
    raise InputError(f"{name} must be a (4,4) homogeneous matrix or (3,) x, y, yaw, got shape {pose.shape}")


def _body_deltas(prev: np.ndarray, now: np.ndarray) -> np.ndarray:
    """(T,3) increments (dx, dy, dyaw) of poses ``now`` in the body frames of poses ``prev`` (both (T,3))."""
    cos_yaw, sin_yaw = np.cos(prev[:, 2]), np.sin(prev[:, 2])
    shift = now[:, :2] - prev[:, :2]
    return np.stack(
        [
            cos_yaw * shift[:, 0] + sin_yaw * shift[:, 1],
            -sin_yaw * shift[:, 0] + cos_yaw * shift[:, 1],
            wrap_angle(now[:, 2] - prev[:, 2]),
        ],
        axis=1,
    )


def body_delta(T_prev, T_now) -> np.ndarray:
    """(3,) dx, dy, dyaw of ``T_now`` in the body frame of ``T_prev``; each a (4,4) matrix or (3,) x, y, yaw."""
    prev, now = _pose_xyyaw(T_prev, "T_prev"), _pose_xyyaw(T_now, "T_now")
    return _body_deltas(prev[None], now[None])[0]


class DriftOdometry:
    """Simulated wheel/visual odometry whose integration drifts, as a vehicle's would (not ground truth).

    Each body-frame increment of the true path is scaled by ``1 + scale_error`` and turned by
    ``heading_bias_deg_per_m`` per metre driven, plus white noise: ``noise_trans`` (std-dev per metre,
    fraction) on the translation and ``noise_rot_deg`` (degrees std-dev per step) on the rotation.
    """

    def __init__(
        self,
        scale_error: float = 0.02,
        heading_bias_deg_per_m: float = 0.01,
        noise_trans: float = 0.01,
        noise_rot_deg: float = 0.1,
        seed: int = 0,
    ):
        self.scale_error = float(scale_error)
        self.heading_bias_rad_per_m = float(np.radians(heading_bias_deg_per_m))
        self.noise_trans = float(noise_trans)
        self.noise_rot_rad = float(np.radians(noise_rot_deg))
        self._rng = np.random.default_rng(seed)

    def deltas(self, poses_xyyaw) -> np.ndarray:
        """(T,3) body-frame increments for the (T,3) true poses x, y, yaw; row 0 is zero (no previous pose)."""
        poses = _finite_array(poses_xyyaw, "poses_xyyaw", "(T,3) x, y, yaw")
        if poses.ndim != 2 or poses.shape[1] != 3:
            raise InputError(f"poses_xyyaw must have shape (T,3) x, y, yaw, got {poses.shape}")
        true = _body_deltas(poses[:-1], poses[1:])
        dist = np.hypot(true[:, 0], true[:, 1])
        out = np.zeros_like(poses)
        trans_noise = self._rng.normal(size=(len(true), 2)) * (self.noise_trans * dist)[:, None]
        out[1:, :2] = true[:, :2] * (1.0 + self.scale_error) + trans_noise
        out[1:, 2] = (
            true[:, 2] + self.heading_bias_rad_per_m * dist + self._rng.normal(0.0, self.noise_rot_rad, len(true))
        )
        return out

    def path(self, poses_xyyaw) -> np.ndarray:
        """(T,3) x, y, yaw of the drifting odometry in its own frame: ``deltas`` integrated from the origin."""
        out = np.zeros((len(np.asarray(poses_xyyaw)), 3))
        x = y = yaw = 0.0
        for i, (dx, dy, dyaw) in enumerate(self.deltas(poses_xyyaw)):
            x, y = x + dx * np.cos(yaw) - dy * np.sin(yaw), y + dx * np.sin(yaw) + dy * np.cos(yaw)
            yaw = float(wrap_angle(yaw + dyaw))
            out[i] = (x, y, yaw)
        return out


def _grid_keys(xy: np.ndarray, cell_m: float) -> np.ndarray:
    """(M,) int64 key of the grid cell (side ``cell_m``) of each (M,2) point; neighbours differ by _key_offsets."""
    cells = np.floor(np.asarray(xy) / cell_m).astype(np.int64)
    return (cells[:, 0] + _CELL_BIAS) * _CELL_STRIDE + cells[:, 1] + _CELL_BIAS


def _key_offsets(reach: int) -> np.ndarray:
    """Key differences from a cell to the (2 reach + 1)^2 cells around it (itself included)."""
    steps = np.arange(-reach, reach + 1)
    return (steps[:, None] * _CELL_STRIDE + steps[None, :]).ravel()


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct ``keys``, the row of one occurrence of each, and each row's index into them."""
    order = np.argsort(keys)
    sorted_keys = keys[order]
    starts = np.empty(len(keys), dtype=bool)
    starts[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    group_of = np.empty(len(keys), dtype=np.int64)
    group_of[order] = np.cumsum(starts) - 1
    return sorted_keys[starts], order[starts], group_of


def _check_poses7(poses7) -> np.ndarray:
    poses = _finite_array(poses7, "viewpoint poses", "(N,7) x y z qx qy qz qw")
    if poses.ndim != 2 or poses.shape[1] != 7 or len(poses) == 0:
        raise InputError(f"viewpoint poses must have shape (N,7) x y z qx qy qz qw with N >= 1, got {poses.shape}")
    norm = np.linalg.norm(poses[:, 3:7], axis=1)
    if np.any(norm < 1e-9):
        raise InputError(
            f"viewpoint pose row {int(np.argmin(norm))} has a zero quaternion; give unit quaternions qx qy qz qw"
        )
    return poses


class ViewpointIndex:
    """Uniform-grid spatial hash over the map's viewpoints (positions, headings), built once per map.

    Viewpoints are sorted by grid cell (side ``cell_m``) and the occupied cells' keys kept sorted: a query
    visits only the cells around it (a binary search each, over the occupied cells) and the viewpoints in
    them, so its cost depends on the local density, not on N.  Keys are exact within 2^20 cells of the
    origin (a local map frame); beyond, far cells share keys, which costs time but never a wrong answer.
    """

    def __init__(self, poses7: np.ndarray, cell_m: float = 8.0):
        poses = _check_poses7(poses7)
        if not np.isfinite(cell_m) or cell_m <= 0:
            raise InputError(f"cell_m must be a positive number of metres, got {cell_m!r}")
        self.cell_m = float(cell_m)
        self.xyz = poses[:, :3].copy()
        self.xy = np.ascontiguousarray(poses[:, :2])
        self.yaw = heading_of(poses)
        keys = _grid_keys(self.xy, self.cell_m)
        self._order = np.argsort(keys, kind="stable")
        self._cell_keys, self._cell_starts, self._cell_counts = np.unique(
            keys[self._order], return_index=True, return_counts=True
        )
        self._sorted_x, self._sorted_y = self.xy[self._order, 0].copy(), self.xy[self._order, 1].copy()
        self.cos_yaw, self.sin_yaw = np.cos(self.yaw), np.sin(self.yaw)
        self._sorted_cos, self._sorted_sin = self.cos_yaw[self._order], self.sin_yaw[self._order]

    def __len__(self) -> int:
        return len(self.xy)

    def _pairs(self, xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every viewpoint in the cells within ``radius`` of each query, grouped by query.

        Returns (query, slot) per pair (slot: position in the cell-sorted order) and the (M,) pair counts.
        """
        offsets = _key_offsets(int(np.ceil(radius / self.cell_m)))
        keys = (_grid_keys(xy, self.cell_m)[:, None] + offsets).ravel()
        found = np.minimum(np.searchsorted(self._cell_keys, keys), len(self._cell_keys) - 1)
        hit = np.flatnonzero(self._cell_keys[found] == keys)
        counts = self._cell_counts[found[hit]]
        ends = np.cumsum(counts)
        first_slots = self._cell_starts[found[hit]] - (ends - counts)
        slots = np.arange(ends[-1] if len(ends) else 0) + np.repeat(first_slots, counts)
        query_of_hit = hit // len(offsets)
        per_query = np.bincount(query_of_hit, weights=counts, minlength=len(xy)).astype(np.int64)
        return np.repeat(query_of_hit, counts), slots, per_query

    def _pair_dist2(self, xy: np.ndarray, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        dx = self._sorted_x[slots] - xy[:, 0][query]
        dy = self._sorted_y[slots] - xy[:, 1][query]
        return dx * dx + dy * dy

    def near(self, xy, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(query, viewpoint) index pairs of all viewpoints within ``radius`` m of each (M,2) query point."""
        xy = _finite_array(xy, "xy", "(M,2)").reshape(-1, 2)
        query, slots, _ = self._pairs(xy, radius)
        inside = self._pair_dist2(xy, query, slots) <= radius * radius
        return query[inside], self._order[slots[inside]]

    def nearest_along(
        self,
        xy: np.ndarray,
        yaw: np.ndarray,
        radius: float,
        gate_rad: float,
        resolution_m: float = 1.0,
        sectors: int = 24,
    ) -> np.ndarray:
        """(M,) id of the nearest viewpoint within ``radius`` and within ``gate_rad`` of heading ``yaw``; -1: none.

        Queries in the same ``resolution_m`` grid cell and heading sector (of 2 pi / ``sectors``) share the
        answer of one of them, so a concentrated particle cloud costs a handful of lookups.
        """
        sector = np.floor(yaw * (sectors / (2.0 * np.pi))).astype(np.int64) % sectors
        _, first, shared = _distinct(_grid_keys(xy, resolution_m) * sectors + sector)
        return self._nearest_exact(xy[first], yaw[first], radius, gate_rad)[shared]

    def _nearest_exact(self, xy: np.ndarray, yaw: np.ndarray, radius: float, gate_rad: float) -> np.ndarray:
        """nearest_along for every query: the minimum of the gated squared distances over each query's pairs."""
        query, slots, group_counts = self._pairs(xy, radius)
        dist2 = self._pair_dist2(xy, query, slots)
        aligned = np.cos(yaw)[query] * self._sorted_cos[slots] + np.sin(yaw)[query] * self._sorted_sin[slots]
        cost = np.where((dist2 <= radius * radius) & (aligned >= np.cos(gate_rad)), dist2, np.inf)
        nearest = np.full(len(xy), -1, dtype=np.int64)
        if cost.size == 0:
            return nearest
        has_pairs = group_counts > 0
        group_min = np.minimum.reduceat(cost, (np.cumsum(group_counts) - group_counts)[has_pairs])
        best = np.flatnonzero((cost == np.repeat(group_min, group_counts[has_pairs])) & np.isfinite(cost))
        nearest[query[best]] = self._order[slots[best]]
        return nearest


@dataclass
class FilterEstimate:
    """The filter's pose after a frame."""

    pose: np.ndarray  # (3,) x, y (m), yaw (rad, in [-pi, pi)) in the map frame: the mode cluster's weighted mean
    z: float  # m: mean z of the viewpoints near the pose (so a 3-D pose can be published)
    covariance: np.ndarray  # (6,6) over x y z roll pitch yaw from the mode's particles (z/roll/pitch fixed)
    mode_weight: float  # share of the weight within cluster_radius_m of the mode
    spread_m: float  # weighted RMS distance of all particles to the pose (m)
    converged: bool  # tight, heavy, same cluster for converge_frames frames and recently supported
    frames_converged: int  # consecutive frames the mode has been tight, heavy and the same cluster


class MapLocalizationFilter:
    """Particle filter over the map's viewpoints; see the module docstring for the model."""

    def __init__(self, viewpoint_poses7: np.ndarray, cfg: FilterConfig | None = None):
        self.cfg = cfg if cfg is not None else FilterConfig()
        self.index = ViewpointIndex(viewpoint_poses7, cell_m=self.cfg.graph_snap_radius_m)
        self._rng = np.random.default_rng(self.cfg.seed)
        self._cos_match_gate = float(np.cos(np.radians(self.cfg.heading_gate_deg)))
        self._image_only = False  # the last motion update was the road-graph one (no odometry)
        self.reset()

    @property
    def initialized(self) -> bool:
        return self._weight is not None

    @property
    def particles(self) -> np.ndarray:
        """(P,3) copy of the particles' x, y, yaw (empty when uninitialised)."""
        return np.stack([self._x, self._y, self._yaw], axis=1)

    @property
    def weights(self) -> np.ndarray:
        """(P,) copy of the particles' weights (empty when uninitialised)."""
        return np.empty(0) if self._weight is None else self._weight.copy()

    def reset(self, hyp_ids=None, hyp_scores=None) -> None:
        """Re-initialise around the given hypotheses (weighted by their scores); none: uninitialised."""
        self._frames_converged = 0
        self._frames_unsupported = 0
        self._z = float(np.mean(self.index.xyz[:, 2]))
        empty = np.empty(0)
        self._x = self._y = self._yaw = self._speed = empty
        self._in_mode = np.zeros(0, dtype=bool)
        self._weight = None
        if hyp_ids is None:
            return
        ids, scores = self._check_hypotheses(hyp_ids, hyp_scores)
        if ids.size == 0:
            return
        count = self.cfg.num_particles
        self._x, self._y, self._yaw, source = self._draw_around(ids, count)
        self._speed = self._rng.uniform(0.0, self.cfg.graph_max_speed_mps, count)
        self._in_mode = np.zeros(count, dtype=bool)
        weight = self._candidate_likelihood(scores)[source]
        self._weight = weight / weight.sum()

    def predict_odometry(self, delta) -> None:
        """Move the particles by a (3,) body-frame increment dx, dy (m), dyaw (rad) of the previous pose."""
        delta = _finite_array(delta, "odometry delta", "(3,) dx, dy, dyaw")
        if delta.shape != (3,):
            raise InputError(f"odometry delta must have shape (3,) dx, dy, dyaw, got {delta.shape}")
        self._image_only = False
        if not self.initialized:
            return
        cfg, count = self.cfg, len(self._x)
        dist = float(np.hypot(delta[0], delta[1]))
        trans_std = cfg.odom_noise_trans * dist + cfg.odom_floor_trans_m
        rot_std = cfg.odom_noise_rot * abs(delta[2]) + cfg.odom_noise_yaw_per_m * dist + cfg.odom_floor_rot_rad
        forward = delta[0] + self._rng.normal(0.0, trans_std, count)
        left = delta[1] + self._rng.normal(0.0, trans_std, count)
        cos_yaw, sin_yaw = np.cos(self._yaw), np.sin(self._yaw)
        self._x = self._x + cos_yaw * forward - sin_yaw * left
        self._y = self._y + sin_yaw * forward + cos_yaw * left
        self._yaw = wrap_angle(self._yaw + delta[2] + self._rng.normal(0.0, rot_std, count))

    def predict_graph(self, dt: float) -> None:
        """Image-only motion over ``dt`` seconds: drive forward, follow the road graph in one's own direction.

        A particle driving further than graph_step_m splits its drive into equal substeps, each ending
        with a road lookup, so that it follows bends instead of cutting them.
        """
        if not np.isfinite(dt) or dt < 0:
            raise InputError(f"dt must be a finite number of seconds >= 0, got {dt!r}")
        self._image_only = True
        if not self.initialized:
            return
        cfg = self.cfg
        self._speed = np.clip(
            self._speed + self._rng.normal(0.0, cfg.graph_speed_walk_mps2 * dt, len(self._x)),
            0.0,
            cfg.graph_max_speed_mps,
        )
        turning = np.flatnonzero(self._rng.random(len(self._x)) < cfg.graph_uturn_rate_hz * dt)
        self._yaw[turning] = wrap_angle(self._yaw[turning] + np.pi)  # a U-turn (dead end, missed turn)
        substeps = np.maximum(1, np.ceil(self._speed * dt / cfg.graph_step_m)).astype(np.int64)
        for step in range(int(substeps.max())):
            rows = np.flatnonzero(substeps > step)
            self._drive_along_graph(rows, dt / substeps[rows])

    def _drive_along_graph(self, rows: np.ndarray, dt: np.ndarray) -> None:
        """Move particles ``rows`` for ``dt`` (per particle) seconds, then put them back onto the road graph."""
        cfg = self.cfg
        yaw = self._yaw[rows] + np.radians(cfg.graph_yaw_noise_deg) * np.sqrt(dt) * self._rng.standard_normal(len(rows))
        drive = self._speed[rows] * dt
        xy = np.stack([self._x[rows] + drive * np.cos(yaw), self._y[rows] + drive * np.sin(yaw)], axis=1)
        nearest = self.index.nearest_along(xy, yaw, cfg.graph_snap_radius_m, np.radians(cfg.graph_heading_gate_deg))
        lost = np.flatnonzero(nearest < 0)
        lost_xy, lost_yaw, lost_dt = xy[lost], yaw[lost], dt[lost, None]
        self._follow_viewpoints(xy, yaw, np.maximum(nearest, 0))
        xy[lost] = self._rng.normal(lost_xy, cfg.graph_lost_pos_std_m * np.sqrt(lost_dt))
        yaw[lost] = self._rng.normal(lost_yaw, np.radians(cfg.graph_lost_yaw_std_deg) * np.sqrt(lost_dt[:, 0]))
        self._x[rows], self._y[rows], self._yaw[rows] = xy[:, 0], xy[:, 1], wrap_angle(yaw)

    def _follow_viewpoints(self, xy: np.ndarray, yaw: np.ndarray, viewpoints: np.ndarray) -> None:
        """Pull each particle's heading toward its viewpoint's and its position onto that one's line (in place)."""
        cfg, index = self.cfg, self.index
        yaw += cfg.graph_heading_gain * wrap_angle(index.yaw[viewpoints] - yaw)
        normal_x, normal_y = -index.sin_yaw[viewpoints], index.cos_yaw[viewpoints]
        lateral = (xy[:, 0] - index.xy[viewpoints, 0]) * normal_x + (xy[:, 1] - index.xy[viewpoints, 1]) * normal_y
        shift = np.clip((1.0 - cfg.graph_lateral_gain) * lateral, -cfg.graph_lateral_m, cfg.graph_lateral_m) - lateral
        xy[:, 0] += shift * normal_x
        xy[:, 1] += shift * normal_y

    def _floor(self) -> float:
        """Odometry keeps a lock through frames that support nothing near it, so its particles may lose less."""
        return self.cfg.likelihood_floor_image_only if self._image_only else self.cfg.likelihood_floor

    def _converge_frames(self) -> int:
        """Odometry makes a heavy mode trustworthy sooner; image-only motion needs a longer streak."""
        cfg = self.cfg
        return cfg.converge_frames_image_only if self._image_only else cfg.converge_frames

    def _converged_share(self) -> float:
        cfg = self.cfg
        return cfg.recovery_share_image_only if self._image_only else cfg.recovery_share

    def _unconverged_share(self) -> float:
        """Odometry holds a lock through bad frames, so a small share suffices; image-only motion needs more."""
        cfg = self.cfg
        return cfg.recovery_share_unconverged_image_only if self._image_only else cfg.recovery_share_unconverged

    def update(self, hyp_ids, hyp_scores) -> FilterEstimate:
        """Weigh the particles by a frame's hypotheses (map row ids, best first) and return the estimate.

        Then resample if degenerate and redraw the recovery share around the top hypotheses.  An
        uninitialised filter is initialised from the hypotheses.  An empty hypothesis list is a frame
        without a measurement (allowed once initialised; it supports no pose).
        """
        ids, scores = self._check_hypotheses(hyp_ids, hyp_scores)
        measured = self.initialized and ids.size > 0
        if not self.initialized:
            if ids.size == 0:
                raise InputError(
                    "the filter is not initialised and the frame has no hypotheses; "
                    "give at least one hypothesis id and score"
                )
            self.reset(ids, scores)  # its weights already hold this frame's scores
        occupied_cells, _, cell_of = _distinct(_grid_keys(self.particles[:, :2], self.cfg.cluster_radius_m))
        if measured:
            supported = self._weigh(*self._candidates_near(ids, scores, occupied_cells))
        else:  # a reset draws the particles around this frame's hypotheses; no hypotheses support nothing
            supported = np.full(len(self._x), ids.size > 0)
        estimate = self._estimate(cell_of, supported)
        self._resample_if_degenerate()
        if ids.size:
            share = self._converged_share() if estimate.converged else self._unconverged_share()
            self._inject_recovery(ids, share)
        return estimate

    def _check_hypotheses(self, hyp_ids, hyp_scores) -> tuple[np.ndarray, np.ndarray]:
        """(k,) int64 map rows and (k,) float scores, or an InputError naming what is wrong."""
        ids = np.asarray(hyp_ids if hyp_ids is not None else [])
        scores = _finite_array(hyp_scores if hyp_scores is not None else [], "hypothesis scores", "(k,)")
        if ids.ndim != 1 or scores.shape != ids.shape:
            raise InputError(
                f"hypothesis ids and scores must be 1-D and of equal length, got shapes {ids.shape} and {scores.shape}"
            )
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self.index)):
            raise InputError(
                f"hypothesis ids must be integer rows of the map in [0, {len(self.index) - 1}], got {ids.tolist()[:10]}"
            )
        return ids.astype(np.int64), scores

    def _candidate_likelihood(self, scores: np.ndarray) -> np.ndarray:
        return np.exp((scores - scores.max()) / self.cfg.temperature)

    def _draw_around(self, ids: np.ndarray, count: int):
        """``count`` poses drawn around viewpoints ``ids`` (equal shares): x, y, yaw and each one's source row."""
        source = np.arange(count) % len(ids)
        pos_std, yaw_std = self.cfg.recovery_pos_std_m, np.radians(self.cfg.recovery_yaw_std_deg)
        xy = self.index.xy[ids[source]] + self._rng.normal(0.0, pos_std, (count, 2))
        yaw = wrap_angle(self.index.yaw[ids[source]] + self._rng.normal(0.0, yaw_std, count))
        return xy[:, 0], xy[:, 1], yaw, source

    def _candidates_near(self, ids: np.ndarray, scores: np.ndarray, occupied_cells: np.ndarray):
        """The candidates (ids, log relative likelihood) that can lift a particle above the floor.

        A candidate must beat the floor and have particles in a cluster-grid cell within match_radius_m.
        """
        cfg = self.cfg
        log_lik = (scores - scores.max()) / cfg.temperature
        useful = np.flatnonzero(log_lik > np.log(self._floor()))
        offsets = _key_offsets(int(np.ceil(cfg.match_radius_m / cfg.cluster_radius_m)))
        around = (_grid_keys(self.index.xy[ids[useful]], cfg.cluster_radius_m)[:, None] + offsets).ravel()
        found = np.minimum(np.searchsorted(occupied_cells, around), len(occupied_cells) - 1)
        occupied = (occupied_cells[found] == around).reshape(len(useful), len(offsets)).any(axis=1)
        return ids[useful[occupied]], log_lik[useful[occupied]]

    def _weigh(self, ids: np.ndarray, log_lik: np.ndarray) -> np.ndarray:
        """Measurement update: w_i <- w_i max(floor, max_j L_j kernel_ij), normalised (log L_j given).

        Returns (P,) bool: the particles the frame supported (likelihood above the floor).
        """
        cfg = self.cfg
        if ids.size == 0:  # every particle at the floor: the weights do not change
            return np.zeros(len(self._x), dtype=bool)
        index = self.index
        best = _best_log_likelihood(
            self._x,
            self._y,
            np.cos(self._yaw),
            np.sin(self._yaw),
            index.xy[ids, 0],  # fancy indexing: new contiguous arrays
            index.xy[ids, 1],
            index.cos_yaw[ids],
            index.sin_yaw[ids],
            log_lik,
            cfg.match_radius_m**2,
            self._cos_match_gate,
            1.0 / (2.0 * cfg.match_sigma_m**2),
        )
        likelihood = np.exp(best)
        floor = self._floor()
        weight = self._weight * np.maximum(likelihood, floor)
        self._weight = weight / weight.sum()
        return likelihood > floor

    def _resample_if_degenerate(self) -> None:
        """Low-variance (systematic) resampling when the effective sample size is below half the particles."""
        count = len(self._weight)
        if 1.0 / np.sum(self._weight**2) >= 0.5 * count:
            return
        positions = (self._rng.random() + np.arange(count)) / count
        keep = np.minimum(np.searchsorted(np.cumsum(self._weight), positions), count - 1)
        self._take(keep)
        self._weight = np.full(count, 1.0 / count)

    def _take(self, rows: np.ndarray) -> None:
        self._x, self._y, self._yaw = self._x[rows], self._y[rows], self._yaw[rows]
        self._speed, self._in_mode = self._speed[rows], self._in_mode[rows]

    def _inject_recovery(self, ids: np.ndarray, share: float) -> None:
        """Redraw the lightest ``share`` of the particles around the top hypotheses, weight 1/P each."""
        count = len(self._weight)
        redraw = int(round(share * count))
        if redraw == 0:
            return
        shuffled = self._rng.permutation(count)  # random choice among equal weights
        rows = shuffled[np.argpartition(self._weight[shuffled], redraw - 1)[:redraw]]
        speed_donors = np.minimum(np.searchsorted(np.cumsum(self._weight), self._rng.random(redraw)), count - 1)
        self._speed[rows] = self._speed[speed_donors]
        self._x[rows], self._y[rows], self._yaw[rows], _ = self._draw_around(ids[: self.cfg.recovery_top_k], redraw)
        self._in_mode[rows] = False
        kept = np.ones(count, dtype=bool)
        kept[rows] = False
        self._weight[kept] *= (1.0 - redraw / count) / self._weight[kept].sum()
        self._weight[rows] = 1.0 / count

    def _mode_centre(self, cell_of: np.ndarray) -> np.ndarray:
        """(2,) centre of the heaviest cluster: the best of the heaviest grid cells' (``cell_of``) weighted means."""
        radius, weight = self.cfg.cluster_radius_m, self._weight
        cell_weight = np.bincount(cell_of, weights=weight)
        top = np.argsort(cell_weight)[-_MODE_CANDIDATES:]
        sum_x = np.bincount(cell_of, weights=weight * self._x)[top]
        sum_y = np.bincount(cell_of, weights=weight * self._y)[top]
        centres = np.stack([sum_x, sum_y], axis=1) / cell_weight[top, None]
        dist2 = (self._x[:, None] - centres[:, 0]) ** 2 + (self._y[:, None] - centres[:, 1]) ** 2
        return centres[np.argmax(weight @ (dist2 <= radius * radius))]

    def _estimate(self, cell_of: np.ndarray, supported: np.ndarray) -> FilterEstimate:
        """The mode's pose and covariance; updates the convergence counters (``supported``: from _weigh)."""
        cfg, weight = self.cfg, self._weight
        centre = self._mode_centre(cell_of)
        members = (self._x - centre[0]) ** 2 + (self._y - centre[1]) ** 2 <= cfg.cluster_radius_m**2
        member_weight = np.where(members, weight, 0.0)
        mode_weight = float(member_weight.sum())
        pose, cov3 = self._weighted_pose(np.flatnonzero(members))
        dist2 = (self._x - pose[0]) ** 2 + (self._y - pose[1]) ** 2
        cluster_radius = np.sqrt(member_weight @ dist2 / mode_weight)
        tight = cluster_radius <= cfg.converge_radius_m and mode_weight >= cfg.converge_mode_weight
        same_cluster = member_weight @ self._in_mode >= _SAME_MODE_SHARE * mode_weight
        self._frames_converged = (self._frames_converged + 1 if same_cluster else 1) if tight else 0
        mode_supported = member_weight @ supported >= 0.5 * mode_weight
        self._frames_unsupported = 0 if mode_supported else self._frames_unsupported + 1
        converged = (
            self._frames_converged >= self._converge_frames() and self._frames_unsupported < cfg.converge_support_frames
        )
        self._in_mode = members
        self._z = self._viewpoint_height(pose[:2])
        return FilterEstimate(
            pose=pose,
            z=self._z,
            covariance=_covariance6(cov3),
            mode_weight=mode_weight,
            spread_m=float(np.sqrt(weight @ dist2)),
            converged=converged,
            frames_converged=self._frames_converged,
        )

    def _weighted_pose(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean (x, y, circular-mean yaw) and (3,3) covariance of the particles ``rows``."""
        weight = self._weight[rows]
        weight = weight / weight.sum()
        yaw = self._yaw[rows]
        mean_yaw = np.arctan2(weight @ np.sin(yaw), weight @ np.cos(yaw))
        centred = np.stack([self._x[rows], self._y[rows], wrap_angle(yaw - mean_yaw)], axis=1)
        mean = weight @ centred
        centred -= mean
        cov3 = (centred * weight[:, None]).T @ centred
        pose = np.array([mean[0], mean[1], float(wrap_angle(mean_yaw + mean[2]))])
        return pose, 0.5 * (cov3 + cov3.T)

    def _viewpoint_height(self, xy: np.ndarray) -> float:
        """Mean z of the viewpoints within cluster_radius_m of ``xy``; the previous height if there are none."""
        _, near = self.index.near(xy[None], self.cfg.cluster_radius_m)
        return float(np.mean(self.index.xyz[near, 2])) if near.size else self._z


def _covariance6(cov3: np.ndarray) -> np.ndarray:
    """(6,6) covariance over x y z roll pitch yaw from the (3,3) one over x y yaw plus fixed z / tilt variances."""
    cov6 = np.diag([_MIN_XY_VAR, _MIN_XY_VAR, _Z_VAR, _TILT_VAR, _TILT_VAR, _MIN_YAW_VAR])
    planar = [0, 1, 5]
    cov6[np.ix_(planar, planar)] += cov3
    return cov6
