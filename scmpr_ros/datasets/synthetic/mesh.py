"""Triangle soup with per-triangle semantics for the synthetic town.

Every triangle carries a SemanticKITTI id, a texture kind, a linear-RGB albedo, six texture
parameters, a LiDAR reflectance and an instance id; primitives (box, cylinder, cone, blob,
gable roof, quad) are placed with a yaw about z and a translation.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tex(IntEnum):
    ASPHALT = 0
    PAINT = 1  # lane marks, zebra stripes
    PAVING = 2  # sidewalk tiles
    WALL = 3  # building facade with window pattern
    ROOF = 4
    GRASS = 5
    FOLIAGE = 6
    BARK = 7
    METAL = 8
    SIGN = 9  # sign face with a white rim
    CARPAINT = 10  # body with a dark window band
    CLOTH = 11
    FENCE = 12  # vertical slats
    CONCRETE = 13
    LAMP = 14  # street-lamp head, emissive at night
    TIRE = 15


# SemanticKITTI raw ids used by the town (semantic-kitti.yaml)
SK = {
    "car": 10,
    "truck": 18,
    "person": 30,
    "road": 40,
    "parking": 44,
    "sidewalk": 48,
    "building": 50,
    "fence": 51,
    "other_structure": 52,
    "lane_marking": 60,
    "vegetation": 70,
    "trunk": 71,
    "terrain": 72,
    "pole": 80,
    "traffic_sign": 81,
    "other_object": 99,
}


def _unit_icosphere() -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5**0.5) / 2.0
    v = np.array(
        [
            [-1, t, 0],
            [1, t, 0],
            [-1, -t, 0],
            [1, -t, 0],
            [0, -1, t],
            [0, 1, t],
            [0, -1, -t],
            [0, 1, -t],
            [t, 0, -1],
            [t, 0, 1],
            [-t, 0, -1],
            [-t, 0, 1],
        ],
        dtype=np.float64,
    )
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int64,
    )
    verts = list(v / np.linalg.norm(v, axis=1, keepdims=True))
    cache: dict[tuple[int, int], int] = {}

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = verts[a] + verts[b]
            verts.append(m / np.linalg.norm(m))
            cache[key] = len(verts) - 1
        return cache[key]

    faces = []
    for a, b, c in f:
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    return np.asarray(verts), np.asarray(faces, dtype=np.int64)


_ICO_V, _ICO_F = _unit_icosphere()  # 42 vertices, 80 triangles

_BOX_V = np.array(
    [
        [-0.5, -0.5, 0],
        [0.5, -0.5, 0],
        [0.5, 0.5, 0],
        [-0.5, 0.5, 0],
        [-0.5, -0.5, 1],
        [0.5, -0.5, 1],
        [0.5, 0.5, 1],
        [-0.5, 0.5, 1],
    ],
    dtype=np.float64,
)
# outward-facing (counter-clockwise seen from outside); bottom omitted: it is never seen
_BOX_F = np.array(
    [[4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]],
    dtype=np.int64,
)
_BOX_F_BOTTOM = np.array([[0, 2, 1], [0, 3, 2]], dtype=np.int64)


def _rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class MeshBuilder:
    """Accumulates triangles and their attributes; ``arrays()`` returns the packed scene."""

    def __init__(self) -> None:
        self._v: list[np.ndarray] = []
        self._f: list[np.ndarray] = []
        self._attr: list[tuple] = []
        self._nv = 0
        self._next_instance = 1

    def new_instance(self) -> int:
        self._next_instance += 1
        return self._next_instance - 1

    def add(
        self, verts, faces, sk: int, tex: Tex, color, param=(0, 0, 0, 0, 0, 0), refl: float = 0.3, inst: int = 0
    ) -> None:
        verts = np.asarray(verts, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        self._v.append(verts)
        self._f.append(faces + self._nv)
        self._nv += len(verts)
        p = tuple(param) + (0.0,) * (6 - len(param))
        self._attr.append((len(faces), int(sk), int(tex), tuple(float(c) for c in color), p, float(refl), int(inst)))

    # --- primitives ---------------------------------------------------------------------------
    def box(self, x, y, z0, sx, sy, sz, yaw=0.0, bottom=False, **kw) -> None:
        v = _BOX_V * np.array([sx, sy, sz]) @ _rotz(yaw).T + np.array([x, y, z0])
        f = np.concatenate([_BOX_F, _BOX_F_BOTTOM]) if bottom else _BOX_F
        self.add(v, f, **kw)

    def quad(self, corners, **kw) -> None:
        """Four corners in order (a planar convex polygon)."""
        self.add(np.asarray(corners), [[0, 1, 2], [0, 2, 3]], **kw)

    def rect(self, x0, y0, x1, y1, z, tile: float = 0.0, **kw) -> None:
        """Axis-aligned horizontal rectangle, split into tiles of at most ``tile`` metres (BVH-friendly)."""
        nx = max(int(np.ceil((x1 - x0) / tile)), 1) if tile > 0 else 1
        ny = max(int(np.ceil((y1 - y0) / tile)), 1) if tile > 0 else 1
        gx, gy = np.meshgrid(np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1), indexing="ij")
        v = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, float(z))], axis=1)
        i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        a = (i * (ny + 1) + j).ravel()
        b, c, d = a + (ny + 1), a + (ny + 1) + 1, a + 1
        self.add(v, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]), **kw)

    def oriented_rect(self, cx, cy, along, across, yaw, z, **kw) -> None:
        """Flat rectangle centred at (cx, cy), ``along`` metres in direction yaw, ``across`` across it."""
        R = _rotz(yaw)
        local = np.array(
            [
                [-along / 2, -across / 2, 0],
                [along / 2, -across / 2, 0],
                [along / 2, across / 2, 0],
                [-along / 2, across / 2, 0],
            ]
        )
        self.quad(local @ R.T + np.array([cx, cy, z]), **kw)

    def cylinder(self, x, y, z0, r, h, n=8, cap=True, **kw) -> None:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ring = np.stack([np.cos(a) * r, np.sin(a) * r], axis=1)
        v = np.concatenate([np.c_[ring, np.zeros(n)], np.c_[ring, np.full(n, h)], [[0, 0, h]]]) + [x, y, z0]
        i = np.arange(n)
        j = (i + 1) % n
        f = np.concatenate([np.stack([i, j, j + n], 1), np.stack([i, j + n, i + n], 1)])
        if cap:
            f = np.concatenate([f, np.stack([i + n, j + n, np.full(n, 2 * n)], 1)])
        self.add(v, f, **kw)

    def cone(self, x, y, z0, r, h, n=8, **kw) -> None:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        v = np.concatenate([np.stack([np.cos(a) * r, np.sin(a) * r, np.zeros(n)], 1), [[0, 0, h]]]) + [x, y, z0]
        i = np.arange(n)
        self.add(v, np.stack([i, (i + 1) % n, np.full(n, n)], 1), **kw)

    def blob(self, x, y, z, rx, ry, rz, rng: np.random.Generator, jitter=0.18, **kw) -> None:
        """A lumpy ellipsoid (tree canopy, bush, head)."""
        v = _ICO_V * (1.0 + jitter * (rng.random((len(_ICO_V), 1)) - 0.5) * 2)
        self.add(v * np.array([rx, ry, rz]) + [x, y, z], _ICO_F, **kw)

    def disc(self, x, y, z, r, yaw, thickness=0.04, n=12, **kw) -> None:
        """Vertical disc (round sign plate) facing direction ``yaw``."""
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ring = np.stack([np.zeros(n), np.cos(a) * r, np.sin(a) * r], 1)
        v = np.concatenate(
            [
                ring + [thickness / 2, 0, 0],
                ring - [thickness / 2, 0, 0],
                [[thickness / 2, 0, 0], [-thickness / 2, 0, 0]],
            ]
        )
        i = np.arange(n)
        j = (i + 1) % n
        f = np.concatenate(
            [
                np.stack([i, j, np.full(n, 2 * n)], 1),
                np.stack([i + n, np.full(n, 2 * n + 1), j + n], 1),
                np.stack([i, i + n, j + n], 1),
                np.stack([i, j + n, j], 1),
            ]
        )
        self.add(v @ _rotz(yaw).T + [x, y, z], f, **kw)

    def triangle_plate(self, x, y, z, side, yaw, thickness=0.04, **kw) -> None:
        """Vertical equilateral triangle (warning sign) facing ``yaw``, apex up."""
        h = side * 3**0.5 / 2
        tri = np.array([[0, -side / 2, -h / 3], [0, side / 2, -h / 3], [0, 0, 2 * h / 3]])
        v = np.concatenate([tri + [thickness / 2, 0, 0], tri - [thickness / 2, 0, 0]])
        f = [[0, 1, 2], [3, 5, 4], [0, 3, 4], [0, 4, 1], [1, 4, 5], [1, 5, 2], [2, 5, 3], [2, 3, 0]]
        self.add(v @ _rotz(yaw).T + [x, y, z], f, **kw)

    def gable_roof(self, x, y, z0, sx, sy, h, yaw=0.0, **kw) -> None:
        """Pitched roof over a sx * sy footprint (ridge along the longer side)."""
        if sy > sx:
            sx, sy, yaw = sy, sx, yaw + np.pi / 2
        v = np.array(
            [
                [-sx / 2, -sy / 2, 0],
                [sx / 2, -sy / 2, 0],
                [sx / 2, sy / 2, 0],
                [-sx / 2, sy / 2, 0],
                [-sx / 2, 0, h],
                [sx / 2, 0, h],
            ]
        )
        f = [[0, 1, 5], [0, 5, 4], [2, 3, 4], [2, 4, 5], [1, 2, 5], [3, 0, 4]]
        self.add(v @ _rotz(yaw).T + [x, y, z0], f, **kw)

    # --- packing -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        counts = np.array([a[0] for a in self._attr], dtype=np.int64)

        def rep(values, dtype):
            return np.repeat(np.asarray(values, dtype=dtype), counts, axis=0)

        return {
            "vertices": np.concatenate(self._v).astype(np.float32),
            "triangles": np.concatenate(self._f).astype(np.uint32),
            "sk": rep([a[1] for a in self._attr], np.uint16),
            "tex": rep([a[2] for a in self._attr], np.uint8),
            "color": rep([a[3] for a in self._attr], np.float32),
            "param": rep([a[4] for a in self._attr], np.float32),
            "refl": rep([a[5] for a in self._attr], np.float32),
            "inst": rep([a[6] for a in self._attr], np.uint16),
        }
