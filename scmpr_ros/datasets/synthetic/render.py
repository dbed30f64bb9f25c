"""Camera and LiDAR of the synthetic town, ray-cast with open3d's RaycastingScene from one mesh.

Camera: one ray per pixel through K^-1 [u, v, 1] (pixel centres at integer coordinates, as KITTI's
P2); radiance = albedo * (ambient(n) + sun * max(0, n.l) * visibility) + emission, then distance
fog ``f = exp(-t / D)`` and the tone curve ``1 - exp(-k x)`` with gamma 2.2.  Conditions change only
this shading: day (sun + shadow rays), night (headlight cone, street lamps ~ 1/d^2, lit windows,
lamp glow, sensor noise), winter (overcast, snow on up-facing surfaces, low contrast, dense fog).
LiDAR: 64 beams evenly spaced over +2..-24.8 deg, ``azimuth_steps`` columns, 0.9-120 m, range noise
1.2 cm, reflectance = material * (0.45 + 0.55 |cos incidence|) + noise, label = SemanticKITTI id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scmpr_ros.datasets.synthetic import _kernels as kern
from scmpr_ros.semantics import IGNORE_ID, semantic_kitti_to_common

CONDITIONS = ("day", "night", "winter")
LIDAR_FOV_UP_DEG = 2.0
LIDAR_FOV_DOWN_DEG = -24.8
LIDAR_BEAMS = 64
LIDAR_MIN_RANGE_M = 0.9
LIDAR_MAX_RANGE_M = 120.0
LIDAR_RANGE_NOISE_M = 0.012


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
        elev = np.deg2rad(np.linspace(LIDAR_FOV_UP_DEG, LIDAR_FOV_DOWN_DEG, LIDAR_BEAMS))
        az = np.pi - 2 * np.pi * np.arange(self.azimuth_steps) / self.azimuth_steps
        el, a = np.meshgrid(elev, az)  # azimuth-major: one column of 64 beams after another
        self.lidar_dirs = (
            np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], -1).reshape(-1, 3).astype(np.float32)
        )
        self.lidar_dirs_T = np.ascontiguousarray(self.lidar_dirs.T, dtype=np.float32)

    # --- ray casting ----------------------------------------------------------------------------
    def _cast(self, T_town_sensor: np.ndarray, dirs_T: np.ndarray) -> dict:
        """Cast rays with sensor-frame directions (3,N); normals come back facing the rays."""
        R = np.ascontiguousarray(T_town_sensor[:3, :3], dtype=np.float32)
        origin = np.ascontiguousarray(T_town_sensor[:3, 3], dtype=np.float32)
        rays = kern.make_rays(origin, R, dirs_T)
        out = self.scene.cast_rays(self.o3d.core.Tensor.from_numpy(rays))
        t = out["t_hit"].numpy()
        normals = out["primitive_normals"].numpy()
        tri = kern.post_cast(out["primitive_ids"].numpy(), normals, rays)
        return {"t": t, "tri": tri, "normal": normals, "dirs": rays[:, 3:], "origin": origin, "R": R}

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

    def scan(self, T_town_velo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """LiDAR scan in the velo frame: points (M,4) float32 x,y,z,reflectance and uint32 labels."""
        res = self._cast(T_town_velo, self.lidar_dirs_T)
        t = res["t"]
        keep = (res["tri"] >= 0) & (t > LIDAR_MIN_RANGE_M) & (t < LIDAR_MAX_RANGE_M)
        keep &= rng.random(len(t)) > 0.004  # dropped returns
        idx = np.nonzero(keep)[0]
        tri = res["tri"][idx]
        rng_m = t[idx] + rng.normal(0.0, LIDAR_RANGE_NOISE_M, len(idx)).astype(np.float32)
        d_w = res["dirs"][idx]
        n = res["normal"][idx]
        cos_inc = np.abs(np.einsum("ij,ij->i", n, d_w))
        p_w = res["origin"] + d_w * t[idx, None]
        m = self.mesh
        factor = kern.lidar_reflectance_factor(
            tri, p_w, m["tex"], m["param"], m["color"], n, self.noise.tables[0], self.noise.tables[1]
        )
        refl = m["refl"][tri] * factor * (0.45 + 0.55 * cos_inc)
        refl = np.clip(refl + rng.normal(0.0, 0.02, len(idx)), 0.0, 0.99).astype(np.float32)
        pts = np.empty((len(idx), 4), dtype=np.float32)
        pts[:, :3] = self.lidar_dirs[idx] * rng_m[:, None]
        pts[:, 3] = refl
        labels = self.mesh["sk"][tri].astype(np.uint32) | (self.mesh["inst"][tri].astype(np.uint32) << 16)
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
