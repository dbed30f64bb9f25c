"""Map viewpoints (paper eq. 6): accumulated labelled map, viewpoint poses, rendering, frustum grids.

* Map: every scan's range-image points (xyz, reflectance, label, normal) in the world frame, voxel
  downsampled (mean position / reflectance / normal, majority label).
* Viewpoints: places every ``place_spacing_m`` of driven path x ``lateral_offsets_m`` (along the
  place's left axis) x ``yaw_offsets_deg``.  ``T_world_vp = T_world_place @ Trans(0, lateral, 0) @ Rz(yaw)``.
* Rendering (``MapConfig.render_mode``): ``scan`` re-projects the nearest real scan into the viewpoint
  (exact for a rotation about the sensor); ``map`` splats the accumulated map: each point is a disc
  of radius ``splat_radius_m`` on its tangent plane, ray-intersected per pixel, nearest wins; ``auto``
  uses the scan for viewpoints without lateral offset (exact, 3x faster) and the map otherwise
  (the re-projected scan leaves parallax holes: test_viewpoints measures both against true scans).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scmpr_ros.config import CameraConfig, MapConfig
from scmpr_ros.errors import InputError
from scmpr_ros.lidar.range_image import RangeImage, RangeProjector, range_image_from_pixels
from scmpr_ros.semantics import IGNORE_ID, NUM_CLASSES
from scmpr_ros.semantics.grid import grid_from_points

RENDER_MODES = ("auto", "scan", "map")
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)


def transform_points(p: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(M, 3) points through a 4x4 transform, elementwise (a BLAS call for a 3x3 product is slower,
    and much slower when its threads compete for the cores)."""
    T = np.asarray(T)
    dt = p.dtype
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    out = np.empty(p.shape[:1] + (3,), dtype=dt)
    for k in range(3):
        out[:, k] = x * dt.type(T[k, 0]) + y * dt.type(T[k, 1]) + z * dt.type(T[k, 2]) + dt.type(T[k, 3])
    return out


# -- accumulated map ----------------------------------------------------------------------------
@dataclass
class LabelledMap:
    """Voxel-downsampled labelled point map in the world frame, bucketed in square xy tiles."""

    points: np.ndarray  # (N, 3) float32
    reflectance: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) uint8
    normals: np.ndarray  # (N, 3) float32 unit, 0 where unknown
    voxel_size: float
    tile_size: float = 16.0
    _tile_keys: np.ndarray = field(default=None, repr=False)  # sorted unique tile keys
    _tile_start: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        t = np.floor(self.points[:, :2] / self.tile_size).astype(np.int64) + _KEY_OFFSET
        key = (t[:, 0] << 32) | t[:, 1]
        order = np.argsort(key, kind="stable")
        for name in ("points", "reflectance", "labels", "normals"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[order]))
        key = key[order]
        self._tile_keys, self._tile_start = np.unique(key, return_index=True)
        self._tile_start = np.append(self._tile_start, len(key))

    def __len__(self) -> int:
        return int(len(self.points))

    def indices_near(self, center_xy: np.ndarray, radius: float) -> np.ndarray:
        """Indices of the points in the tiles that overlap the square of half-size radius around center."""
        lo = np.floor((np.asarray(center_xy[:2]) - radius) / self.tile_size).astype(np.int64) + _KEY_OFFSET
        hi = np.floor((np.asarray(center_xy[:2]) + radius) / self.tile_size).astype(np.int64) + _KEY_OFFSET
        tx, ty = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        wanted = (tx.ravel() << 32) | ty.ravel()
        if not len(self._tile_keys):
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._tile_keys, wanted), len(self._tile_keys) - 1)
        pos = pos[self._tile_keys[pos] == wanted]
        if not len(pos):
            return np.zeros(0, dtype=np.int64)
        starts, ends = self._tile_start[pos], self._tile_start[pos + 1]
        return np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])


def _voxel_keys(points: np.ndarray, voxel: float) -> np.ndarray:
    v = np.floor(points / voxel).astype(np.int64) + _KEY_OFFSET
    if (v.min(initial=1) < 0) or (v.max(initial=0) >= (1 << _KEY_BITS)):
        raise InputError(f"points beyond +-{voxel * _KEY_OFFSET:.0f} m of the origin cannot be voxelised at {voxel} m")
    return (v[:, 0] << (2 * _KEY_BITS)) | (v[:, 1] << _KEY_BITS) | v[:, 2]


class MapAccumulator:
    """Adds scans one at a time and keeps running voxel sums (bounded memory)."""

    def __init__(self, voxel_size: float, flush_points: int = 2_000_000):
        if voxel_size <= 0:
            raise InputError(f"map.voxel_size_m must be > 0, got {voxel_size}")
        self.voxel = float(voxel_size)
        self.flush_points = int(flush_points)
        self._pending: list[tuple] = []
        self._pending_n = 0
        # reduced state: per voxel sums; per (voxel, label) vote counts
        self._keys = np.zeros(0, np.int64)
        self._sums = np.zeros((0, 7), np.float64)  # x y z refl nx ny nz
        self._counts = np.zeros(0, np.int64)
        self._vkeys = np.zeros(0, np.int64)  # (voxel key, label) vote table
        self._vlabels = np.zeros(0, np.uint8)
        self._vcounts = np.zeros(0, np.int64)
        self.scans = 0

    def add_range_image(self, ri: RangeImage, T_world_velo: np.ndarray) -> None:
        """Add the valid pixels of a scan's range image (one point per pixel, with its normal)."""
        v = ri.valid
        T = np.asarray(T_world_velo, dtype=np.float64)
        p = transform_points(ri.xyz[v].astype(np.float64), T)
        Rn = np.eye(4)
        Rn[:3, :3] = T[:3, :3]
        n = transform_points(ri.normals[v].astype(np.float64), Rn)
        self._pending.append((p, ri.reflectance[v].astype(np.float64), ri.labels[v], n))
        self._pending_n += len(p)
        self.scans += 1
        if self._pending_n >= max(self.flush_points, len(self._keys)):  # amortised O(n log n)
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        p = np.concatenate([x[0] for x in self._pending])
        refl = np.concatenate([x[1] for x in self._pending])
        lab = np.concatenate([x[2] for x in self._pending]).astype(np.int64)
        nrm = np.concatenate([x[3] for x in self._pending])
        self._pending, self._pending_n = [], 0
        keys = np.concatenate([self._keys, _voxel_keys(p, self.voxel)])
        sums = np.concatenate([self._sums, np.concatenate([p, refl[:, None], nrm], 1)])
        counts = np.concatenate([self._counts, np.ones(len(p), np.int64)])
        self._keys, inv = np.unique(keys, return_inverse=True)
        self._sums = np.stack([np.bincount(inv, weights=sums[:, k], minlength=len(self._keys)) for k in range(7)], 1)
        self._counts = np.bincount(inv, weights=counts, minlength=len(self._keys)).astype(np.int64)
        labelled = lab != IGNORE_ID
        vkeys = np.concatenate([self._vkeys, _voxel_keys(p[labelled], self.voxel)])
        vlabels = np.concatenate([self._vlabels, lab[labelled].astype(np.uint8)])
        vcounts = np.concatenate([self._vcounts, np.ones(int(labelled.sum()), np.int64)])
        order = np.lexsort((vlabels, vkeys))
        vkeys, vlabels, vcounts = vkeys[order], vlabels[order], vcounts[order]
        start = np.flatnonzero(np.r_[True, (vkeys[1:] != vkeys[:-1]) | (vlabels[1:] != vlabels[:-1])])
        self._vkeys, self._vlabels = vkeys[start], vlabels[start]
        self._vcounts = np.add.reduceat(vcounts, start) if len(start) else vcounts[:0]

    def finish(self, tile_size: float = 16.0) -> LabelledMap:
        self._flush()
        c = self._counts[:, None].astype(np.float64)
        mean = self._sums / np.maximum(c, 1)
        nrm = mean[:, 4:7]
        nn = np.linalg.norm(nrm, axis=1, keepdims=True)
        nrm = np.divide(nrm, nn, out=np.zeros_like(nrm), where=nn > 0.3)  # disagreeing normals: unknown
        labels = np.full(len(self._keys), IGNORE_ID, np.uint8)
        if len(self._vkeys):
            vox, lab = self._vkeys, self._vlabels
            order = np.lexsort((-self._vcounts, vox))  # per voxel, most votes first
            vox_o = vox[order]
            first = np.r_[True, vox_o[1:] != vox_o[:-1]]
            pos = np.searchsorted(self._keys, vox_o[first])
            labels[pos] = lab[order][first].astype(np.uint8)
        return LabelledMap(
            points=mean[:, :3].astype(np.float32),
            reflectance=mean[:, 3].astype(np.float32),
            labels=labels,
            normals=nrm.astype(np.float32),
            voxel_size=self.voxel,
            tile_size=tile_size,
        )


# -- viewpoint poses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Viewpoint:
    viewpoint_id: int
    source_frame: int  # mapping-pass frame of the place (its scan serves "scan" rendering)
    place: int
    yaw_offset_deg: float
    lateral_offset_m: float
    T_world_velo: np.ndarray  # (4, 4) pose of the virtual LiDAR


def offset_pose(T_place: np.ndarray, lateral_m: float, yaw_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    D = np.eye(4)
    D[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    D[1, 3] = lateral_m
    return np.asarray(T_place, dtype=np.float64) @ D


def place_frames(poses: np.ndarray, pose_valid: np.ndarray, spacing_m: float) -> np.ndarray:
    """Frames where a new place starts: the first valid one, then the first frame past each multiple
    of ``spacing_m`` of travelled path (at most one place per frame; standing still adds none)."""
    if spacing_m <= 0:
        raise InputError(f"map.place_spacing_m must be > 0, got {spacing_m}")
    valid = np.flatnonzero(np.asarray(pose_valid, dtype=bool))
    if not len(valid):
        return np.zeros(0, dtype=np.int64)
    xyz = np.asarray(poses)[valid, :3, 3]
    travelled = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))]
    out, nxt = [], 0.0
    for f, d in zip(valid, travelled):
        if d >= nxt:
            out.append(int(f))
            nxt += spacing_m * (1 + np.floor((d - nxt) / spacing_m))  # next multiple beyond d
    return np.asarray(out, dtype=np.int64)


def plan_viewpoints(poses: np.ndarray, pose_valid: np.ndarray, cfg: MapConfig) -> list[Viewpoint]:
    """Viewpoints of a mapping pass: places x lateral offsets x yaw offsets, ids in that order."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise InputError(f"poses must be (N, 4, 4), got {poses.shape}")
    if not cfg.yaw_offsets_deg or not cfg.lateral_offsets_m:
        raise InputError("map.yaw_offsets_deg and map.lateral_offsets_m need at least one value each (e.g. [0.0])")
    out: list[Viewpoint] = []
    for place, f in enumerate(place_frames(poses, pose_valid, cfg.place_spacing_m)):
        for lat in cfg.lateral_offsets_m:
            for yaw in cfg.yaw_offsets_deg:
                out.append(Viewpoint(len(out), int(f), place, float(yaw), float(lat), offset_pose(poses[f], lat, yaw)))
    return out


# -- rendering ----------------------------------------------------------------------------------
class ViewpointRenderer:
    """Renders a RangeImage (range, labels, normals, ...) per viewpoint; see the module docstring."""

    def __init__(
        self,
        projector: RangeProjector,
        cfg: MapConfig,
        labelled_map: LabelledMap | None = None,
        load_scan: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
        scan_poses: np.ndarray | None = None,
    ):
        if cfg.render_mode not in RENDER_MODES:
            raise InputError(f"map.render_mode '{cfg.render_mode}' unknown (use {' | '.join(RENDER_MODES)})")
        self.projector = projector
        self.cfg = cfg
        self.map = labelled_map
        self.load_scan = load_scan
        self.scan_poses = scan_poses
        H, W = projector.H, projector.W
        pitch = projector.row_pitch(np.arange(H))[:, None]
        yaw = projector.column_yaw(np.arange(W))[None, :]
        self.ray_dirs = np.stack(
            [np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch) * np.ones_like(yaw)], -1
        ).astype(np.float32)  # (H, W, 3) pixel-centre ray directions
        self.ray_dirs_flat = [np.ascontiguousarray(self.ray_dirs[..., k].ravel()) for k in range(3)]
        self._scan_cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def mode_for(self, vp: Viewpoint) -> str:
        if self.cfg.render_mode != "auto":
            return self.cfg.render_mode
        return "scan" if vp.lateral_offset_m == 0.0 else "map"

    def render(self, vp: Viewpoint, yaw_window: tuple[float, float] | None = None) -> RangeImage:
        """Full 360 degree RangeImage of the viewpoint; ``yaw_window`` (yaw, hfov) renders only that
        sector (other columns stay empty) so that a later crop_to_fov costs nothing extra."""
        mode = self.mode_for(vp)
        if mode == "scan":
            return self._render_scan(vp, yaw_window)
        return self.render_map(vp.T_world_velo, yaw_window)

    # nearest real scan, re-projected into the viewpoint
    def _render_scan(self, vp: Viewpoint, yaw_window) -> RangeImage:
        if self.load_scan is None or self.scan_poses is None:
            raise InputError("render_mode 'scan' needs the mapping pass scans (load_scan and scan_poses)")
        if self._scan_cache is not None and self._scan_cache[0] == vp.source_frame:
            pts, lab = self._scan_cache[1]
        else:
            pts, lab = self.load_scan(vp.source_frame)
            self._scan_cache = (vp.source_frame, (pts, lab))
        T_vp_src = np.linalg.inv(vp.T_world_velo) @ self.scan_poses[vp.source_frame]
        if np.allclose(T_vp_src, np.eye(4), atol=1e-12):
            moved = pts
        else:
            moved = pts.copy()
            moved[:, :3] = transform_points(pts[:, :3], T_vp_src)
        if yaw_window is not None:
            keep = _in_yaw_window(moved[:, :3], *yaw_window, margin=4 * 2 * np.pi / self.projector.W)
            return self.projector.project(moved[keep], None if lab is None else lab[keep])
        return self.projector.project(moved, lab)

    # splatted accumulated map
    def render_map(self, T_world_velo: np.ndarray, yaw_window: tuple[float, float] | None = None) -> RangeImage:
        if self.map is None:
            raise InputError("render_mode 'map' needs the accumulated map (build it with MapAccumulator)")
        proj, m = self.projector, self.map
        H, W = proj.H, proj.W
        T = np.asarray(T_world_velo, dtype=np.float64)
        radius = min(self.cfg.render_radius_m, proj.cfg.max_range_m)
        idx = m.indices_near(T[:3, 3], radius)
        # world -> viewpoint, structure of arrays (elementwise: no BLAS call for 3x3 products)
        R = T[:3, :3].astype(np.float32)
        q = [m.points[idx, k] - np.float32(T[k, 3]) for k in range(3)]
        px, py, pz = (q[0] * R[0, k] + q[1] * R[1, k] + q[2] * R[2, k] for k in range(3))
        if yaw_window is not None:
            a = (np.arctan2(py, px) - yaw_window[0] + np.pi) % (2 * np.pi) - np.pi
            keep = np.flatnonzero(np.abs(a) <= yaw_window[1] / 2 + 12 * 2 * np.pi / W)
            px, py, pz, idx = px[keep], py[keep], pz[keep], idx[keep]
        p = np.stack([px, py, pz], 1)
        rows, cols, r, ok = proj.pixel_coords(p)
        sel = np.flatnonzero(ok)
        idx, rows, cols, r = idx[sel], rows[sel], cols[sel], r[sel].astype(np.float32)
        px, py, pz = px[sel], py[sel], pz[sel]
        nw = m.normals[idx]
        nx, ny, nz = (nw[:, 0] * R[0, k] + nw[:, 1] * R[1, k] + nw[:, 2] * R[2, k] for k in range(3))
        s = np.float32(self.cfg.splat_radius_m)
        kmax = int(self.cfg.max_splat_px)
        has_n = nx * nx + ny * ny + nz * nz > 0.25
        # angular half-extent of each disc along the image axes: s * sqrt(1 - (n . e)^2) / r for
        # e = the yaw / pitch tangent directions at the point (an unknown normal gets no splat)
        rxy = np.maximum(np.hypot(px, py), np.float32(1e-6))
        n_yaw = (-py * nx + px * ny) / rxy
        n_pitch = (-(px * nx + py * ny) * pz / rxy + rxy * nz) / r
        ext_c = s * np.sqrt(np.clip(1 - n_yaw * n_yaw, 0, 1)) / r
        ext_r = s * np.sqrt(np.clip(1 - n_pitch * n_pitch, 0, 1)) / r
        hc = np.where(has_n, np.minimum(np.floor(ext_c / (2 * np.pi / W) + 0.5), kmax), 0).astype(np.int64)
        hr = np.where(has_n, np.minimum(np.floor(ext_r / (proj.fov / H) + 0.5), kmax), 0).astype(np.int64)
        # expand every splat to its (2 hr + 1) x (2 hc + 1) pixel box; own pixels first
        big = np.flatnonzero((hc > 0) | (hr > 0))
        wc, wr = 2 * hc[big] + 1, 2 * hr[big] + 1
        sizes = wc * wr
        rep = np.repeat(big, sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        wcr = np.repeat(wc, sizes)
        dc = local % wcr - hc[rep]
        dr = local // wcr - hr[rep]
        rr = rows[rep] + dr
        extra = ((dr != 0) | (dc != 0)) & (rr >= 0) & (rr < H)
        rep, rr, dc = rep[extra], rr[extra], dc[extra]
        n_own = len(idx)
        pix = np.concatenate([rows * W + cols, rr * W + (cols[rep] + dc) % W])
        pt = np.concatenate([np.arange(n_own), rep])
        # ray (pixel centre) / splat-plane intersection; the hit must stay inside the disc
        dx, dy, dz = (self.ray_dirs_flat[k][pix] for k in range(3))
        ax, ay, az = nx[pt], ny[pt], nz[pt]
        qx, qy, qz = px[pt], py[pt], pz[pt]
        denom = ax * dx + ay * dy + az * dz
        plane = has_n[pt] & (np.abs(denom) > 1e-3)
        t = np.where(plane, (ax * qx + ay * qy + az * qz) / np.where(plane, denom, 1), r[pt])
        ox, oy, oz = dx * t - qx, dy * t - qy, dz * t - qz
        in_disc = plane & (ox * ox + oy * oy + oz * oz <= s * s)
        own = np.zeros(len(pix), bool)
        own[:n_own] = True
        # a point's own pixel keeps its measured position when the plane hit leaves the disc
        keep_own = own & ~in_disc
        t = np.where(keep_own, r[pt], t)
        ok = (own | in_disc) & (t > proj.cfg.min_range_m) & (t <= proj.cfg.max_range_m) & np.isfinite(t)
        cand = np.flatnonzero(ok)
        key = pix[cand].astype(np.float64) + t[cand] / (proj.cfg.max_range_m * 1.001)
        order = cand[np.argsort(key)]
        pix_s = pix[order]
        first = np.ones(len(pix_s), bool)
        np.not_equal(pix_s[1:], pix_s[:-1], out=first[1:])
        win = order[first]
        pixw = pix_s[first]
        kw = keep_own[win]
        hit = np.stack(
            [
                np.where(kw, qx[win], dx[win] * t[win]),
                np.where(kw, qy[win], dy[win] * t[win]),
                np.where(kw, qz[win], dz[win] * t[win]),
            ],
            1,
        )
        src = idx[pt[win]]
        return range_image_from_pixels(H, W, pixw, t[win], hit, m.reflectance[src], m.labels[src], src)


def _in_yaw_window(p: np.ndarray, yaw: float, hfov: float, margin: float) -> np.ndarray:
    a = np.arctan2(p[:, 1], p[:, 0]) - yaw
    a = (a + np.pi) % (2 * np.pi) - np.pi
    return np.abs(a) <= hfov / 2 + margin


def render_agreement(
    a: RangeImage, b: RangeImage, abs_tol_m: float = 0.3, rel_tol: float = 0.03, pixel_rad: float | None = None
) -> dict:
    """How well a rendered range image ``a`` matches a real one ``b`` (same geometry).

    Ranges agree within max(abs_tol, rel_tol * r, r * pixel_rad * tan(incidence)): the last term is
    the range spread of a surface seen at incidence angle within one pixel (grazing road, mixed edges).
    """
    both = a.valid & b.valid
    either = a.valid | b.valid
    dr = np.abs(a.range - b.range)
    tol = np.maximum(abs_tol_m, rel_tol * b.range)
    if pixel_rad is not None:
        dirs = np.divide(b.xyz, b.range[..., None], out=np.zeros_like(b.xyz), where=b.range[..., None] > 0)
        cos_inc = np.clip(np.abs(np.sum(dirs * b.normals, axis=-1)), 0.05, 1.0)
        known = np.linalg.norm(b.normals, axis=-1) > 0.5
        spread = b.range * pixel_rad * np.sqrt(1 - cos_inc**2) / cos_inc
        tol = np.where(known, np.maximum(tol, spread), tol)
    close = both & (dr <= tol)
    lab = both & (a.labels != IGNORE_ID) & (b.labels != IGNORE_ID)
    return {
        "valid_iou": float(both.sum() / max(either.sum(), 1)),
        "range_agree": float(close.sum() / max(both.sum(), 1)),
        "truth_recovered": float(close.sum() / max(b.valid.sum(), 1)),  # real pixels rendered right
        "label_agree": float((lab & (a.labels == b.labels)).sum() / max(lab.sum(), 1)),
        "median_abs_range_err_m": float(np.median(dr[both])) if both.any() else float("nan"),
    }


def frustum_grid(
    ri: RangeImage,
    T_cam_velo: np.ndarray,
    camera: CameraConfig,
    rows: int,
    cols: int,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """(rows, cols, N_S) grid of the viewpoint's visible labelled points seen by the reference camera."""
    v = ri.valid & (ri.labels != IGNORE_ID)
    return grid_from_points(ri.xyz[v], ri.labels[v], T_cam_velo, camera, rows, cols, min_fraction, NUM_CLASSES)
