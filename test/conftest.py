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

    def scan(
        self,
        T_world_velo,
        H: int = 64,
        W: int = 1024,
        fov_up: float = 2.0,
        fov_down: float = -24.8,
        max_range: float = 80.0,
        seed: int = 0,
    ):
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


def write_scene_as_kitti(scene: LidarTestScene, out: Path, frames: int = 24, step_m: float = 2.0) -> Path:
    """Write scans of ``scene`` along its street as a KITTI odometry sequence ``out/sequences/00``
    (velodyne, SemanticKITTI labels, calib.txt, poses.txt, times.txt; no images)."""
    import numpy as np

    from scmpr_ros.semantics import CLASS_NAMES, COMMON_TO_SEMANTIC_KITTI

    seq = out / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True, exist_ok=True)
    (seq / "labels").mkdir(exist_ok=True)
    to_sk = np.zeros(256, np.uint32)
    for i, name in enumerate(CLASS_NAMES):
        to_sk[i] = COMMON_TO_SEMANTIC_KITTI[name]
    Tr = np.eye(4)
    Tr[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    Tr[:3, 3] = [0.0, -0.08, -0.27]
    K = np.array([[718.856, 0, 607.1928], [0, 718.856, 185.2157], [0, 0, 1]])
    P0 = np.concatenate([K, np.zeros((3, 1))], 1)
    P2 = P0.copy()
    P2[:, 3] = K @ np.array([0.06, 0.0, 0.0])
    rows = []
    for i in range(frames):
        x = i * step_m
        T = scene.pose(x, 0.3 * np.sin(x / 20), 2 * np.sin(x / 30))
        pts, lab = scene.scan(T, seed=i)
        pts.astype(np.float32).tofile(seq / "velodyne" / f"{i:06d}.bin")
        to_sk[lab].astype(np.uint32).tofile(seq / "labels" / f"{i:06d}.label")
        rows.append((Tr @ T @ np.linalg.inv(Tr))[:3, :4].reshape(-1))
    fmt = lambda a: " ".join(f"{v:.12e}" for v in np.asarray(a).reshape(-1))  # noqa: E731
    (seq / "calib.txt").write_text(
        "".join(f"{k}: {fmt(P)}\n" for k, P in (("P0", P0), ("P1", P0), ("P2", P2), ("P3", P2), ("Tr", Tr[:3])))
    )
    (seq / "poses.txt").write_text("".join(fmt(r) + "\n" for r in rows))
    (seq / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(frames)))
    return out


@pytest.fixture(scope="session")
def scene_kitti_dir(lidar_scene, tmp_path_factory):
    return write_scene_as_kitti(lidar_scene, tmp_path_factory.mktemp("scene_kitti"))


@pytest.fixture(scope="session")
def small_model_file(tmp_path_factory):
    import torch

    from scmpr_ros.config import ModelConfig
    from scmpr_ros.model.checkpoint import save_checkpoint
    from scmpr_ros.model.scmpr import SCMPRModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        image_height=64,
        image_width=192,
        feature_dim=32,
        netvlad_clusters=8,
        descriptor_dim=64,
        lidar_dims=[16, 32, 32],
        attention_dim=16,
    )
    path = tmp_path_factory.mktemp("model") / "small.pt"
    save_checkpoint(path, SCMPRModel(cfg).eval(), cfg, {"note": "untrained test model"})
    return path


@pytest.fixture(scope="session")
def built_map(scene_kitti_dir, small_model_file, tmp_path_factory):
    from scmpr_ros.cli import main

    out = tmp_path_factory.mktemp("maps") / "street.scmpr-map"
    cfg = out.parent / "map.yaml"
    cfg.write_text(
        "map:\n  place_spacing_m: 4.0\n  yaw_offsets_deg: [0.0, 20.0]\n  lateral_offsets_m: [0.0, 1.5]\n"
        "  batch_size: 8\n"
    )
    rc = main(
        [
            "build-map",
            str(scene_kitti_dir),
            "--sequence",
            "00",
            "--model",
            str(small_model_file),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--threads",
            "2",
        ]
    )
    assert rc == 0
    return out
