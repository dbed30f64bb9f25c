"""Camera and LiDAR of the synthetic town, ray-cast with open3d's RaycastingScene from one mesh.

Camera: one ray per pixel through K^-1 [u, v, 1] (pixel centres at integer coordinates, as KITTI's
P2); radiance = albedo * (ambient(n) + sun * max(0, n.l) * visibility) + emission, then distance
fog ``f = exp(-t / D)`` and the tone curve ``1 - exp(-k x)`` with gamma 2.2.  Conditions change only
this shading: day (sun + shadow rays), night (headlight cone, street lamps ~ 1/d^2, lit windows,
lamp glow, sensor noise), winter (overcast, snow on up-facing surfaces, low contrast, dense fog).

LiDAR (``lidar_model.py`` holds the sensor descriptions and their sources), ``azimuth_steps`` columns:
  * ``hdl64e`` (default): KITTI's Velodyne HDL-64E S2: its two laser blocks' beam elevations; each column
    cast from the sensor pose at its own time within the 0.1 s sweep (constant velocity from the drive's
    neighbouring poses) and the points de-skewed into the frame-time sensor frame, as KITTI odometry's
    scans; rays into the ego car's body return nothing; window glass answers only near normal incidence,
    else the pulse passes through; a return is reported with the probability of the link budget
    (reflectivity- and range-dependent, 50 m at 10 %, 120 m at 80 %), less at glancing incidence;
    range noise 2 cm, 0.9-120 m; reflectance = material * (0.45 + 0.55 |cos incidence|) + noise.
  * ``uniform``: the idealised sensor (64 beams evenly over +2..-24.8 deg, one pose per scan, 0.9-120 m,
    0.4 % dropouts, range noise 1.2 cm, the same reflectance): the output of the code before ``hdl64e``.
Labels are SemanticKITTI ids (instance in the upper 16 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scmpr_ros.datasets.synthetic import _kernels as kern
from scmpr_ros.datasets.synthetic import lidar_model as lm
from scmpr_ros.semantics import IGNORE_ID, semantic_kitti_to_common

CONDITIONS = ("day", "night", "winter")
GLASS_FACTOR = 0.5  # kern.lidar_reflectance_factor is 1 except on window glass (0.15 / 0.2)
GLASS_STEP_M = 0.01  # a pulse through glass continues from this far behind the pane


class _Noise:
    """Tileable value noise from a random lattice (two prime periods to hide repetition)."""

    def __init__(self, rng: np.random.Generator):
        self.tables = [rng.random((p, p)).astype(np.float32) for p in (257, 241)]


@dataclass
class CameraHits:
    t: np.ndarray  # (H*W,) float32, inf where sky
    tri: np.ndarray  # (H*W,) int64, -1 where sky
    normal: np.ndarray  # (H*W,3) float32 (facing the camera)
    dirs: np.ndarray  # (H*W,3) float32 world ray directions (unit)
    origin: np.ndarray  # (3,) camera centre in the town frame
    R_wc: np.ndarray  # camera rotation (town <- camera)
    width: int
    height: int


class TownRenderer:
    def __init__(
        self,
        mesh: dict,
        lamps: np.ndarray,
        K: np.ndarray,
        image_size: tuple[int, int],
        azimuth_steps: int,
        sun_dir: np.ndarray,
        seed: int,
        lidar: str | lm.LidarModel = "hdl64e",
    ):
        import open3d as o3d

        self.o3d = o3d
        self.mesh = mesh
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh["vertices"]), o3d.core.Tensor(mesh["triangles"]))
        self.common = semantic_kitti_to_common(mesh["sk"].astype(np.uint32))
        self.lamps = np.asarray(lamps, dtype=np.float64).reshape(-1, 3)
        self.K = np.asarray(K, dtype=np.float64)
        self.width, self.height = int(image_size[0]), int(image_size[1])
        self.sun = np.asarray(sun_dir, dtype=np.float32) / np.linalg.norm(sun_dir)
        self.noise = _Noise(np.random.default_rng([seed, 77]))
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
        d = pix @ np.linalg.inv(self.K).T
        self.cam_dirs_T = np.ascontiguousarray((d / np.linalg.norm(d, axis=1, keepdims=True)).T, dtype=np.float32)
        if azimuth_steps < 16:
            raise ValueError(f"azimuth_steps must be >= 16, got {azimuth_steps}")
        self.azimuth_steps = int(azimuth_steps)
        self.lidar = lm.lidar_model(lidar)
        self.lidar_dirs = lm.beam_directions(self.lidar.elevations_deg, self.azimuth_steps)  # azimuth-major
        self.lidar_dirs_T = np.ascontiguousarray(self.lidar_dirs.T, dtype=np.float32)
        self.column_times = lm.column_times(self.azimuth_steps, self.lidar.sweep_period_s)
        self.ego_blocked = lm.ego_occlusion(self.lidar_dirs, self.lidar.ego_boxes)

    # --- ray casting ----------------------------------------------------------------------------
    def _cast(self, T_town_sensor: np.ndarray, dirs_T: np.ndarray) -> dict:
        """Cast rays with sensor-frame directions (3,N); normals come back facing the rays."""
        R = np.ascontiguousarray(T_town_sensor[:3, :3], dtype=np.float32)
        origin = np.ascontiguousarray(T_town_sensor[:3, 3], dtype=np.float32)
        rays = kern.make_rays(origin, R, dirs_T)
        res = self._cast_rays(rays)
        return res | {"dirs": rays[:, 3:], "origin": origin, "R": R}

    def _cast_rays(self, rays: np.ndarray) -> dict:
        """Cast (N,6) float32 world rays: t (inf = miss), tri (-1 = miss), normals facing the rays."""
        out = self.scene.cast_rays(self.o3d.core.Tensor.from_numpy(rays))
        t = out["t_hit"].numpy()
        normals = out["primitive_normals"].numpy()
        tri = kern.post_cast(out["primitive_ids"].numpy(), normals, rays)
        return {"t": t, "tri": tri, "normal": normals}

    def cast_camera(self, T_town_cam: np.ndarray) -> CameraHits:
        res = self._cast(T_town_cam, self.cam_dirs_T)
        return CameraHits(
            res["t"], res["tri"], res["normal"], res["dirs"], res["origin"], res["R"], self.width, self.height
        )

    def class_image(self, hits: CameraHits) -> np.ndarray:
        """Per-pixel common class id (IGNORE_ID for sky), (H, W) uint8."""
        out = np.full(hits.tri.shape, IGNORE_ID, dtype=np.uint8)
        hit = hits.tri >= 0
        out[hit] = self.common[hits.tri[hit]]
        return out.reshape(hits.height, hits.width)

    # --- LiDAR ----------------------------------------------------------------------------------
    def scan(
        self, T_town_velo: np.ndarray, rng: np.random.Generator, motion: tuple | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """LiDAR scan in the velo frame: points (M,4) float32 x,y,z,reflectance and uint32 labels.

        ``motion = (v, w)``: the vehicle's linear (m/s) and angular (rad/s) velocity in the town frame during
        the sweep, ``T_town_velo`` its pose at the frame time; None = at rest.  The uniform sensor ignores it.
        """
        if self.lidar.ideal:
            return self._scan_ideal(T_town_velo, rng)
        m = self.lidar
        rays, offsets = self._sweep_rays(T_town_velo, motion)
        hits = self._cast_rays(rays)
        t = hits["t"]
        cand = np.nonzero((hits["tri"] >= 0) & ~self.ego_blocked & (t > m.min_range_m) & (t < m.max_range_m))[0]
        rays_c = rays[cand]
        t, tri, n = t[cand], hits["tri"][cand], hits["normal"][cand]
        factor = self._reflectance_factor(tri, rays_c[:, :3] + rays_c[:, 3:] * t[:, None], n)
        t, tri, n, factor, ok = self._through_glass(rays_c, t, tri, n, factor, rng)
        cos_inc = np.abs(np.einsum("ij,ij->i", n, rays_c[:, 3:]))
        refl = self.mesh["refl"][tri] * factor * (0.45 + 0.55 * cos_inc)
        ok &= (t > m.min_range_m) & (t < m.max_range_m)
        ok &= rng.random(len(t)) < lm.detection_probability(m, t, refl, cos_inc)
        sel = np.nonzero(ok)[0]
        r = t[sel].astype(np.float64) + rng.normal(0.0, m.range_noise_m, len(sel))
        pts = np.empty((len(sel), 4), dtype=np.float32)
        pts[:, :3] = self._sensor_points(cand[sel], r, rays, offsets, T_town_velo)
        pts[:, 3] = np.clip(refl[sel] + rng.normal(0.0, m.reflectance_noise, len(sel)), 0.0, 0.99)
        tri = tri[sel]
        labels = self.mesh["sk"][tri].astype(np.uint32) | (self.mesh["inst"][tri].astype(np.uint32) << 16)
        return pts, labels

    def _sweep_rays(self, T_town_velo: np.ndarray, motion: tuple | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(N*B, 6) float32 world rays of one sweep, each column from the sensor pose at its time, and each
        column's origin offset from the frame-time origin (None at rest: one pose for the whole sweep)."""
        if motion is None or not (np.any(motion[0]) or np.any(motion[1])):
            R = np.ascontiguousarray(T_town_velo[:3, :3], dtype=np.float32)
            origin = np.ascontiguousarray(T_town_velo[:3, 3], dtype=np.float32)
            return kern.make_rays(origin, R, self.lidar_dirs_T), None
        R_cols, offsets = lm.sweep_poses(T_town_velo, motion, self.column_times)
        beams = self.lidar.beams
        dirs = np.matmul(self.lidar_dirs.reshape(-1, beams, 3), R_cols.astype(np.float32).transpose(0, 2, 1))
        rays = np.empty((dirs.shape[0] * beams, 6), dtype=np.float32)
        rays[:, :3] = np.repeat(np.asarray(T_town_velo, dtype=np.float64)[:3, 3] + offsets, beams, axis=0)
        rays[:, 3:] = dirs.reshape(-1, 3)
        return rays, offsets

    def _sensor_points(
        self, idx: np.ndarray, r: np.ndarray, rays: np.ndarray, offsets: np.ndarray | None, T_town_velo: np.ndarray
    ) -> np.ndarray:
        """Points of rays ``idx`` at ranges ``r``: de-skewed into the frame-time sensor frame (KITTI odometry),
        or, for a raw sensor, each in the sensor frame of its own column's time."""
        if offsets is None or not self.lidar.deskewed:
            return self.lidar_dirs[idx] * r[:, None]
        rel = offsets[idx // self.lidar.beams] + rays[idx, 3:].astype(np.float64) * r[:, None]
        return np.einsum("ij,jk->ik", rel, np.asarray(T_town_velo, dtype=np.float64)[:3, :3])  # R^T rel per row

    def _reflectance_factor(self, tri: np.ndarray, p_w: np.ndarray, n: np.ndarray) -> np.ndarray:
        m = self.mesh
        return kern.lidar_reflectance_factor(
            tri,
            np.ascontiguousarray(p_w, dtype=np.float32),
            m["tex"],
            m["param"],
            m["color"],
            np.ascontiguousarray(n, dtype=np.float32),
            self.noise.tables[0],
            self.noise.tables[1],
        )

    def _through_glass(self, rays: np.ndarray, t, tri, n, factor, rng: np.random.Generator) -> tuple:
        """Window glass answers only near normal incidence; otherwise the pulse goes on and the next surface
        answers, or nothing does (a miss, or a second pane).  Returns (t, tri, n, factor, ok)."""
        ok = np.ones(len(t), dtype=bool)
        glass = np.nonzero(factor < GLASS_FACTOR)[0]
        if not len(glass):
            return t, tri, n, factor, ok
        cos_g = np.abs(np.einsum("ij,ij->i", n[glass], rays[glass, 3:]))
        through = glass[rng.random(len(glass)) >= lm.glass_return_probability(self.lidar, cos_g)]
        if not len(through):
            return t, tri, n, factor, ok
        t, tri, n, factor = t.copy(), tri.copy(), n.copy(), factor.copy()
        start = t[through] + GLASS_STEP_M
        behind = np.empty((len(through), 6), dtype=np.float32)
        behind[:, :3] = rays[through, :3] + rays[through, 3:] * start[:, None]
        behind[:, 3:] = rays[through, 3:]
        res = self._cast_rays(behind)
        hit = res["tri"] >= 0
        ok[through] = hit
        go = through[hit]
        t[go] = start[hit] + res["t"][hit]
        tri[go] = res["tri"][hit]
        n[go] = res["normal"][hit]
        factor[go] = self._reflectance_factor(tri[go], behind[hit, :3] + behind[hit, 3:] * res["t"][hit, None], n[go])
        ok[go] &= factor[go] >= GLASS_FACTOR
        return t, tri, n, factor, ok

    def _scan_ideal(self, T_town_velo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The idealised (uniform) sensor: one pose per sweep, no link budget, glass, ego car or motion."""
        m = self.lidar
        res = self._cast(T_town_velo, self.lidar_dirs_T)
        t = res["t"]
        keep = (res["tri"] >= 0) & (t > m.min_range_m) & (t < m.max_range_m)
        keep &= rng.random(len(t)) > m.random_dropout  # dropped returns
        idx = np.nonzero(keep)[0]
        tri = res["tri"][idx]
        rng_m = t[idx] + rng.normal(0.0, m.range_noise_m, len(idx)).astype(np.float32)
        d_w = res["dirs"][idx]
        n = res["normal"][idx]
        cos_inc = np.abs(np.einsum("ij,ij->i", n, d_w))
        p_w = res["origin"] + d_w * t[idx, None]
        mesh = self.mesh
        factor = kern.lidar_reflectance_factor(
            tri, p_w, mesh["tex"], mesh["param"], mesh["color"], n, self.noise.tables[0], self.noise.tables[1]
        )
        refl = mesh["refl"][tri] * factor * (0.45 + 0.55 * cos_inc)
        refl = np.clip(refl + rng.normal(0.0, m.reflectance_noise, len(idx)), 0.0, 0.99).astype(np.float32)
        pts = np.empty((len(idx), 4), dtype=np.float32)
        pts[:, :3] = self.lidar_dirs[idx] * rng_m[:, None]
        pts[:, 3] = refl
        labels = mesh["sk"][tri].astype(np.uint32) | (mesh["inst"][tri].astype(np.uint32) << 16)
        return pts, labels

    # --- shading --------------------------------------------------------------------------------
    def shade(self, hits: CameraHits, condition: str, T_town_velo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """RGB uint8 (H, W, 3) of the hits under ``condition`` (day | night | winter)."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
        m = self.mesh
        f32 = np.float32
        vis = np.ones(1, dtype=f32)
        heads = np.zeros((0, 3), dtype=f32)
        axis = np.zeros(3, dtype=f32)
        lamps = np.zeros((0, 3), dtype=f32)
        if condition == "day":
            zen, hor, fog, fog_dist = (0.18, 0.32, 0.62), (0.62, 0.7, 0.8), (0.6, 0.66, 0.75), 260.0
            vis = self._sun_visibility(hits)
            k_exp, mix, noise_sd, shot, flakes = 2.3, 0.0, 0.008, 0.0, 0.0
            code = kern.DAY
        elif condition == "winter":
            zen, hor, fog, fog_dist = (0.62, 0.64, 0.68), (0.78, 0.79, 0.82), (0.74, 0.75, 0.78), 110.0
            k_exp, mix, noise_sd, shot, flakes = 2.0, 0.38, 0.012, 0.0, 0.0015
            code = kern.WINTER
        else:
            zen, hor, fog, fog_dist = (0.0008, 0.001, 0.0025), (0.005, 0.0042, 0.0036), (0.003, 0.0028, 0.0025), 160.0
            fwd = T_town_velo[:3, 0]
            left = T_town_velo[:3, 1]
            base = T_town_velo[:3, 3] + fwd * 1.9 - np.array([0.0, 0.0, 1.0])
            heads = np.stack([base + left * 0.75, base - left * 0.75]).astype(f32)
            tilt = np.deg2rad(4.0)
            axis = (fwd * np.cos(tilt) - np.array([0.0, 0.0, 1.0]) * np.sin(tilt)).astype(f32)
            if len(self.lamps):
                dist = np.linalg.norm(self.lamps - hits.origin, axis=1)
                near = np.argsort(dist)[:8]
                lamps = self.lamps[near[dist[near] < 90.0]].astype(f32)
            k_exp, mix, noise_sd, shot, flakes = 4.0, 0.0, 0.03, 0.03, 0.0
            code = kern.NIGHT
        rad = kern.shade_radiance(
            code,
            hits.t,
            hits.tri,
            hits.normal,
            hits.dirs,
            hits.origin.astype(f32),
            m["tex"],
            m["color"],
            m["param"],
            self.noise.tables[0],
            self.noise.tables[1],
            self.sun,
            vis,
            np.array(zen, f32),
            np.array(hor, f32),
            np.array(fog, f32),
            f32(fog_dist),
            heads,
            axis,
            lamps,
        )
        if condition == "night":
            self._lamp_glow(rad.reshape(hits.height, hits.width, 3), hits)
        seed = int(rng.integers(1, 1 << 30))
        out = kern.finish(
            rad, f32(k_exp), f32(mix), f32(noise_sd), f32(shot), f32(flakes), seed, kern.GAUSS_TABLE, kern.GAMMA_LUT
        )
        return out.reshape(hits.height, hits.width, 3)

    def _sun_visibility(self, hits: CameraHits) -> np.ndarray:
        """1 where the sun reaches the hit point, 0 in shadow.

        Shadow rays are cast for every second pixel in both directions (hits within 150 m) and the
        result is repeated to the 2x2 neighbourhood: a quarter of the rays, shadow edges 2 px wide.
        """
        H, W = hits.height, hits.width
        sub = np.zeros((H, W), dtype=bool)
        sub[::2, ::2] = True
        sub = sub.ravel()
        ndl = hits.normal @ self.sun
        cand = np.nonzero(sub & (hits.tri >= 0) & (ndl > 0) & (hits.t < 150.0))[0]
        vis_sub = np.ones(len(hits.t), dtype=np.float32)
        if len(cand):
            rays = np.empty((len(cand), 6), dtype=np.float32)
            rays[:, :3] = hits.origin + hits.dirs[cand] * hits.t[cand, None] + hits.normal[cand] * 0.03
            rays[:, 3:] = self.sun
            occ = self.scene.test_occlusions(self.o3d.core.Tensor(rays), tnear=0.01).numpy()
            vis_sub[cand[occ]] = 0.0
        grid = vis_sub.reshape(H, W)[::2, ::2]
        vis = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)[:H, :W]
        return np.ascontiguousarray(vis.ravel())

    def _lamp_glow(self, img: np.ndarray, hits: CameraHits) -> None:
        if not len(self.lamps):
            return
        rel = (self.lamps - hits.origin) @ hits.R_wc.astype(np.float64)  # camera frame
        for q in rel:
            depth = q[2]
            if depth < 1.0 or depth > 120:
                continue
            uvw = self.K @ q
            u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
            if not (-20 <= u < self.width + 20 and -20 <= v < self.height + 20):
                continue
            ui, vi = int(round(u)), int(round(v))
            in_image = 0 <= ui < self.width and 0 <= vi < self.height
            if in_image and hits.t[vi * self.width + ui] < np.linalg.norm(q) - 1.0:
                continue  # occluded
            sigma = float(np.clip(self.K[0, 0] * 0.35 / depth, 1.5, 30.0))
            r = int(3 * sigma) + 1
            u0, u1 = max(ui - r, 0), min(ui + r + 1, self.width)
            v0, v1 = max(vi - r, 0), min(vi + r + 1, self.height)
            if u0 >= u1 or v0 >= v1:
                continue
            gu, gv = np.meshgrid(np.arange(u0, u1) - u, np.arange(v0, v1) - v)
            g = np.exp(-(gu * gu + gv * gv) / (2 * sigma * sigma)).astype(np.float32)
            img[v0:v1, u0:u1] += g[..., None] * np.array([0.5, 0.4, 0.25], np.float32)
