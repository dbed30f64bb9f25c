"""Shared pytest fixtures. Each block is owned by the part that needs it; keep blocks delimited."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# --- ROS 2 / DDS isolation ---------------------------------------------------------------
# One ROS_DOMAIN_ID per test run (derived from the pid, within the valid 1..101 range) and
# discovery limited to this host, so parallel runs and other machines never see our topics.
def _configure_ros_environment() -> None:
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    venv = Path(os.sys.prefix)
    if "AMENT_PREFIX_PATH" not in os.environ and (venv / "share" / "ament_index").is_dir():
        os.environ["AMENT_PREFIX_PATH"] = str(venv)


_configure_ros_environment()


# --- LiDAR test scene (test_range_image, test_viewpoints, test_map_file) -----------------
# A small street of open3d primitives (ground, buildings, poles, a car, trees) ray-cast with an
# HDL-64-like beam pattern, so the LiDAR geometry is tested before / besides the synthetic town.
class LidarTestScene:
    def __init__(self, seed: int = 0):
        import numpy as np
        import open3d as o3d

        from scmpr_ros.semantics import CLASS_ID

        rng = np.random.default_rng(seed)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.labels: list[int] = []

        def add(mesh, cls):
            self.scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
            self.labels.append(CLASS_ID[cls])

        def box(sx, sy, sz, x, y, z, cls):
            m = o3d.geometry.TriangleMesh.create_box(sx, sy, sz)
            m.translate((x - sx / 2, y - sy / 2, z))
            add(m, cls)

        ground_z = -1.73  # sensor height above the road, as on KITTI
        box(400, 8, 0.02, 60, 0, ground_z - 0.02, "road")
        for side in (-1, 1):
            box(400, 3, 0.17, 60, side * 5.5, ground_z - 0.02, "sidewalk")
            box(400, 10, 0.02, 60, side * 12, ground_z - 0.03, "terrain")
            x = -120.0
            while x < 240:
                w = float(rng.uniform(8, 20))
                h = float(rng.uniform(5, 18))
                box(w, 8, h, x + w / 2, side * float(rng.uniform(12, 16)), ground_z, "building")
                x += w + float(rng.uniform(2, 9))
            for px in np.arange(-100, 220, 17.0) + rng.uniform(0, 5):
                cyl = o3d.geometry.TriangleMesh.create_cylinder(0.15, 6.0)
                cyl.translate((float(px), side * 7.2, ground_z + 3.0))
                add(cyl, "pole")
            for tx in np.arange(-95, 220, 23.0) + rng.uniform(0, 7):
                tree = o3d.geometry.TriangleMesh.create_sphere(1.8)
                tree.translate((float(tx), side * 9.5, ground_z + 4.0))
                add(tree, "vegetation")
        for cx in (14.0, 47.0, 95.0):
            box(4.2, 1.8, 1.5, cx, -3.0, ground_z, "car")
        self.label_of_geometry = np.array(self.labels + [255], dtype=np.uint8)

    def pose(self, x: float, y: float = 0.0, yaw_deg: float = 0.0):
        import numpy as np

        c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
        T = np.eye(4)
        T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
        T[:3, 3] = (x, y, 0.0)
        return T

    def scan(self, T_world_velo, H: int = 64, W: int = 1024, fov_up: float = 2.0, fov_down: float = -24.8,
             max_range: float = 80.0, seed: int = 0):
        """(points (M, 4) x y z reflectance in the sensor frame, labels (M,) uint8)."""
        import numpy as np
        import open3d as o3d

        rng = np.random.default_rng(seed)
        pitch = np.radians(fov_up - (np.arange(H) + rng.uniform(0.2, 0.8, H)) / H * (fov_up - fov_down))
        yaw = np.pi * (1.0 - 2.0 * (np.arange(W) + 0.5) / W)
        P, Y = np.meshgrid(pitch, yaw, indexing="ij")
        d = np.stack([np.cos(P) * np.cos(Y), np.cos(P) * np.sin(Y), np.sin(P)], -1).reshape(-1, 3)
        R, t = T_world_velo[:3, :3], T_world_velo[:3, 3]
        dw = d @ R.T
        rays = np.concatenate([np.broadcast_to(t, dw.shape), dw], 1).astype(np.float32)
        ans = self.scene.cast_rays(o3d.core.Tensor(rays))
        dist = ans["t_hit"].numpy()
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        hit = np.isfinite(dist) & (dist <= max_range)
        pts = d[hit] * dist[hit, None]
        lab = self.label_of_geometry[np.minimum(gid[hit], len(self.labels))]
        refl = (0.2 + 0.05 * (lab % 7) + 0.1 * rng.random(hit.sum())).astype(np.float32)
        return np.concatenate([pts, refl[:, None]], 1).astype(np.float32), lab


@pytest.fixture(scope="session")
def lidar_scene():
    return LidarTestScene(seed=0)
