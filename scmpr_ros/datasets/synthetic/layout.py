"""Procedural town: a street grid, a route through it, and the objects that make places distinct.

Streets lie on an irregular grid (48-72 m spacing); each block gets a district (downtown,
residential, industrial, park) that sets its buildings, yards and fences, and each street its
width, parking, trees and lamps.  The route is a random walk over unused grid edges with
filleted corners (radius 9 m); the mapping pass drives it at c = -1.75 m (right lane); the
query pass drives the same streets 1-2 m to the side, with a stretch in the opposite direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scmpr_ros.datasets.synthetic.mesh import SK, MeshBuilder, Tex

VELO_HEIGHT_M = 1.73
MAP_LANE_C = -1.75  # lateral offset of the mapping pass (left of the centre line is +)
CORNER_RADIUS_M = 9.0
KERB_H = 0.15


def srgb(*rgb) -> tuple[float, float, float]:
    return tuple(float((c / 255.0) ** 2.2) for c in rgb)


FACADES = [
    srgb(*c)
    for c in [
        (215, 200, 170),
        (235, 225, 200),
        (150, 75, 55),
        (115, 62, 50),
        (150, 150, 150),
        (92, 94, 98),
        (225, 225, 220),
        (160, 180, 200),
        (170, 195, 160),
        (225, 200, 120),
        (220, 150, 120),
        (95, 125, 155),
        (175, 168, 155),
        (200, 120, 90),
    ]
]
CAR_COLORS = [
    srgb(*c)
    for c in [
        (200, 200, 205),
        (30, 30, 35),
        (150, 20, 25),
        (20, 40, 120),
        (235, 235, 235),
        (110, 110, 115),
        (40, 90, 50),
        (200, 170, 40),
        (90, 60, 40),
        (160, 165, 175),
    ]
]
CLOTHES = [
    srgb(*c) for c in [(30, 30, 60), (150, 30, 30), (60, 60, 60), (200, 180, 140), (40, 90, 140), (220, 220, 220)]
]
ROOFS = [srgb(*c) for c in [(140, 60, 45), (80, 80, 85), (110, 50, 40), (60, 60, 65), (150, 110, 80)]]
# traffic signs 0-2: mesh method, size, face colour, SIGN param tail (face radius, rim: 1 red / 2 white, 0)
SIGN_PLATES = (
    ("disc", 0.35, srgb(240, 240, 240), (0.27, 1, 0)),  # round prohibitory: white face, red rim
    ("disc", 0.35, srgb(30, 70, 170), (0.3, 2, 0)),  # blue mandatory
    ("triangle_plate", 0.8, srgb(240, 240, 240), (0.16, 1, 0)),  # warning triangle
)
BOARD_COLORS = [srgb(30, 70, 170), srgb(20, 110, 50), srgb(230, 190, 40)]  # sign 3: rectangular information board
# building style -> ranges of the four WALL window-pattern parameters, drawn in this order
WINDOW_RANGES = {
    "downtown": ((3.1, 3.6), (1.6, 3.0), (0.5, 0.8), (0.5, 0.7)),
    "residential": ((2.7, 3.0), (2.4, 4.0), (0.3, 0.5), (0.4, 0.55)),
    "industrial": ((4.0, 6.0), (4.0, 8.0), (0.25, 0.45), (0.15, 0.25)),
}
# district -> lot width range, lot kind, its probability (None: always), the kind otherwise
LOT_KINDS = {
    "downtown": ((10, 22), "building", 0.9, "plaza"),
    "residential": ((12, 20), "house", 0.85, "garden"),
    "industrial": ((20, 40), "warehouse", 0.75, "yard"),
    "park": ((15, 30), "park", None, "park"),
}


def _look(sk: str, tex: Tex, color, refl: float, **extra) -> dict:
    """Surface keywords of a mesh call: semantic class SK[sk], texture, colour, reflectance (and param, inst)."""
    return {"sk": SK[sk], "tex": tex, "color": color, "refl": refl, **extra}


@dataclass
class RoutePath:
    """Dense centre line of the route: arclength s, xy, heading theta; arcs = (s0, s1) corners."""

    s: np.ndarray
    xy: np.ndarray
    theta: np.ndarray
    arcs: list[tuple[float, float]]

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def at(self, s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World xy of the points at arclength s and lateral offset c (left +), and the tangent angle."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        th = np.interp(s, self.s, self.theta)
        c = np.asarray(c, dtype=np.float64)
        return np.stack([x - np.sin(th) * c, y + np.cos(th) * c], axis=-1), th


def _route_from_nodes(points: np.ndarray, radius: float) -> RoutePath:
    """Polyline through grid nodes with every turn replaced by a circular arc of ``radius``."""
    xy_parts, th_parts, arcs = [], [], []
    s_acc = 0.0
    cur = points[0].astype(np.float64)
    step = 0.2

    def line(a, b):
        nonlocal s_acc
        d = b - a
        length = float(np.linalg.norm(d))
        if length < 1e-9:
            return
        n = max(int(np.ceil(length / step)), 1)
        t = np.arange(n) / n
        xy_parts.append(a + t[:, None] * d)
        th_parts.append(np.full(n, np.arctan2(d[1], d[0])))
        s_acc += length

    for k in range(1, len(points) - 1):
        d_in = (points[k] - points[k - 1]) / np.linalg.norm(points[k] - points[k - 1])
        d_out = (points[k + 1] - points[k]) / np.linalg.norm(points[k + 1] - points[k])
        cross = d_in[0] * d_out[1] - d_in[1] * d_out[0]
        if abs(cross) < 1e-6:
            continue
        t1 = points[k] - d_in * radius
        t2 = points[k] + d_out * radius
        line(cur, t1)
        sign = 1.0 if cross > 0 else -1.0
        centre = t1 + sign * radius * np.array([-d_in[1], d_in[0]])
        a0 = np.arctan2(t1[1] - centre[1], t1[0] - centre[0])
        n = max(int(np.ceil(radius * np.pi / 2 / step)), 4)
        ang = a0 + sign * (np.pi / 2) * np.arange(n) / n
        xy_parts.append(centre + radius * np.stack([np.cos(ang), np.sin(ang)], 1))
        th_parts.append(np.arctan2(d_in[1], d_in[0]) + sign * (np.pi / 2) * np.arange(n) / n)
        arcs.append((s_acc, s_acc + radius * np.pi / 2))
        s_acc += radius * np.pi / 2
        cur = t2
    line(cur, points[-1].astype(np.float64))
    xy = np.concatenate(xy_parts + [points[-1][None].astype(np.float64)])
    th = np.unwrap(np.concatenate(th_parts + [th_parts[-1][-1:]]))
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return RoutePath(s=s, xy=xy, theta=th, arcs=arcs)


@dataclass
class TownLayout:
    xs: np.ndarray  # x of the north-south streets
    ys: np.ndarray  # y of the east-west streets
    hx: np.ndarray  # half widths of the x-line streets
    hy: np.ndarray
    route_nodes: list[tuple[int, int]]
    route: RoutePath
    street_props: dict = field(default_factory=dict)


def _walk(rng: np.random.Generator, k: int, length_needed: float, xs, ys) -> list[tuple[int, int]] | None:
    """Random walk over interior nodes (1..k) without reusing an edge; None when stuck."""
    node = (int(rng.integers(1, k + 1)), int(rng.integers(1, k + 1)))
    used: set = set()
    path = [node]
    heading = None
    total = 0.0
    while total < length_needed:
        opts = []
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (node[0] + d[0], node[1] + d[1])
            if not (1 <= nxt[0] <= k and 1 <= nxt[1] <= k):
                continue
            edge = frozenset((node, nxt))
            if edge in used or (heading is not None and d == (-heading[0], -heading[1])):
                continue
            opts.append((d, nxt, 2.5 if d == heading else 1.0))
        if not opts:
            return None
        w = np.array([o[2] for o in opts])
        d, nxt, _ = opts[int(rng.choice(len(opts), p=w / w.sum()))]
        used.add(frozenset((node, nxt)))
        total += abs(xs[nxt[0]] - xs[node[0]]) + abs(ys[nxt[1]] - ys[node[1]])
        node, heading = nxt, d
        path.append(node)
    return path


def plan_layout(rng: np.random.Generator, route_length: float) -> TownLayout:
    edges_needed = int(np.ceil(route_length / 55.0)) + 1
    k = 2
    while 2 * k * (k - 1) < 1.6 * edges_needed + 2:
        k += 1
    for _ in range(6):
        n = k + 2
        xs = np.concatenate([[0.0], np.cumsum(rng.uniform(48, 72, n - 1))])
        ys = np.concatenate([[0.0], np.cumsum(rng.uniform(48, 72, n - 1))])
        for _attempt in range(300):
            nodes = _walk(rng, k, route_length + 2 * CORNER_RADIUS_M, xs, ys)
            if nodes is not None:
                hx = rng.uniform(6.0, 7.5, n)
                hy = rng.uniform(6.0, 7.5, n)
                pts = np.array([[xs[i], ys[j]] for i, j in nodes])
                return TownLayout(xs, ys, hx, hy, nodes, _route_from_nodes(pts, CORNER_RADIUS_M))
        k += 1
    raise RuntimeError("could not plan a route through the town grid")  # unreachable in practice


# --- population ---------------------------------------------------------------------------------
class _Side:
    """One side of a block: point(u, v) = origin + u * along + v * inward (v = 0 at the kerb)."""

    def __init__(self, origin, along, inward, length, street):
        self.o = np.asarray(origin, dtype=np.float64)
        self.a = np.asarray(along, dtype=np.float64)
        self.w = np.asarray(inward, dtype=np.float64)
        self.length = float(length)
        self.street = street
        self.yaw = float(np.arctan2(self.a[1], self.a[0]))
        self.taken: list[tuple[float, float]] = []  # (u, radius) of sidewalk objects

    def p(self, u, v) -> np.ndarray:
        return self.o + u * self.a + v * self.w

    def free(self, u, r) -> bool:
        return all(abs(u - u2) > r + r2 for u2, r2 in self.taken)


class TownBuilder:
    def __init__(self, rng: np.random.Generator, layout: TownLayout):
        self.rng = rng
        self.L = layout
        self.mb = MeshBuilder()
        self.lamps: list[np.ndarray] = []
        n = len(layout.xs)
        self.streets = {}
        for axis, count in (("x", n), ("y", n)):
            for i in range(count):
                self.streets[(axis, i)] = {
                    "trees": rng.random() < 0.5,
                    "lamp_spacing": rng.uniform(22, 34),
                    "lamps_both": rng.random() < 0.4,
                    "parking": [rng.random() < 0.55, rng.random() < 0.45],  # right / left side of the line
                    "double_line": rng.random() < 0.3,
                    "tree_spacing": rng.uniform(8, 13),
                }

    # ---- helpers ----
    def uni(self, lo, hi):
        """Uniform in [lo, hi]; lo when the interval is empty (short sides and lots)."""
        return self.rng.uniform(lo, max(lo, hi))

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def jitter_color(self, c, amount=0.12):
        return tuple(float(np.clip(v * (1 + self.rng.uniform(-amount, amount)), 0, 1)) for v in c)

    # ---- ground, streets ----
    def ground(self) -> None:
        L, mb = self.L, self.mb
        x0, x1 = L.xs[0] - L.hx[0], L.xs[-1] + L.hx[-1]
        y0, y1 = L.ys[0] - L.hy[0], L.ys[-1] + L.hy[-1]
        mb.rect(x0, y0, x1, y1, 0.0, tile=12.0, **_look("road", Tex.ASPHALT, srgb(72, 72, 75), 0.18))
        grass = _look("terrain", Tex.GRASS, srgb(95, 120, 60), 0.4)
        far = 350.0
        for rect in (
            (x0 - far, y0 - far, x1 + far, y0),
            (x0 - far, y1, x1 + far, y1 + far),
            (x0 - far, y0, x0, y1),
            (x1, y0, x1 + far, y1),
        ):
            mb.rect(*rect, 0.0, tile=25.0, **grass)
        self.forest_and_hills(x0, y0, x1, y1)

    def forest_and_hills(self, x0, y0, x1, y1) -> None:
        """A forest belt and distant hills around the grid."""
        for _ in range(int((x1 - x0 + y1 - y0) / 6)):
            side = self.rng.integers(4)
            d = self.rng.uniform(6, 45)
            if side < 2:
                x = self.rng.uniform(x0 - 30, x1 + 30)
                y = y0 - d if side == 0 else y1 + d
            else:
                y = self.rng.uniform(y0, y1)
                x = x0 - d if side == 2 else x1 + d
            self.tree(x, y)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hill = _look("terrain", Tex.GRASS, srgb(80, 105, 60), 0.35)
        for _ in range(10):
            a = self.rng.uniform(0, 2 * np.pi)
            r = max(x1 - x0, y1 - y0) / 2 + self.rng.uniform(120, 260)
            size = (self.rng.uniform(60, 120), self.rng.uniform(60, 120), self.rng.uniform(25, 45))
            self.mb.blob(cx + r * np.cos(a), cy + r * np.sin(a), -10, *size, self.rng, jitter=0.25, **hill)

    def street_marks(self) -> None:
        """Centre lines, parking lines and zebra crossings on every street segment."""
        L, mb = self.L, self.mb
        white, yellow = srgb(235, 235, 230), srgb(230, 190, 40)
        n = len(L.xs)
        for axis in ("x", "y"):
            lines, other, hw_self, hw_other = (L.xs, L.ys, L.hx, L.hy) if axis == "x" else (L.ys, L.xs, L.hy, L.hx)
            for i in range(n):
                props = self.streets[(axis, i)]
                for j in range(n - 1):
                    a0, a1 = other[j] + hw_other[j], other[j + 1] - hw_other[j + 1]
                    c = lines[i]

                    def mark(along0, along1, cross, width, colour):
                        if along1 - along0 < 0.1:
                            return
                        lo, hi = (c + cross - width / 2, along0), (c + cross + width / 2, along1)
                        if axis == "y":
                            lo, hi = lo[::-1], hi[::-1]
                        mb.rect(*lo, *hi, 0.01, **_look("lane_marking", Tex.PAINT, colour, 0.65))

                    if props["double_line"]:
                        mark(a0 + 1, a1 - 1, -0.12, 0.12, yellow)
                        mark(a0 + 1, a1 - 1, 0.12, 0.12, yellow)
                    else:
                        pos = a0 + 2.0
                        while pos + 3.0 < a1 - 2.0:
                            mark(pos, pos + 3.0, 0.0, 0.15, white)
                            pos += 8.0
                    hw = hw_self[i]
                    for side, sgn in ((0, -1), (1, 1)):
                        if props["parking"][side]:
                            mark(a0 + 6, a1 - 6, sgn * (hw - 2.3), 0.12, white)
                    # zebra crossings at some segment ends
                    for lo in (a0 + 0.8, a1 - 3.8):
                        if self.rng.random() < 0.3:
                            for k in range(int(2 * hw / 1.0) - 1):
                                cross = -hw + 1.0 + k * 1.0
                                mark(lo, lo + 3.0, cross, 0.5, white)

    def parked_cars(self) -> None:
        L = self.L
        n = len(L.xs)
        for axis in ("x", "y"):
            lines, other, hw_self, hw_other = (L.xs, L.ys, L.hx, L.hy) if axis == "x" else (L.ys, L.xs, L.hy, L.hx)
            for i in range(n):
                props = self.streets[(axis, i)]
                for side, sgn in ((0, -1), (1, 1)):
                    if not props["parking"][side]:
                        continue
                    for j in range(n - 1):
                        pos = other[j] + 12.0 + self.rng.uniform(0, 4)
                        end = other[j + 1] - 12.0
                        while pos < end - 5:
                            length = self.rng.uniform(4.0, 4.8)
                            if self.rng.random() < 0.75:
                                cross = lines[i] + sgn * (hw_self[i] - 1.15)
                                along = pos + length / 2
                                x, y = (cross, along) if axis == "x" else (along, cross)
                                yaw = (np.pi / 2 if axis == "x" else 0.0) + (np.pi if self.rng.random() < 0.5 else 0.0)
                                self.car(x, y, yaw, length, van=self.rng.random() < 0.12)
                            pos += length + self.rng.uniform(0.8, 6.0)

    # ---- objects ----
    def car(self, x, y, yaw, length=4.4, van=False, z0=0.0) -> None:
        mb, inst = self.mb, self.mb.new_instance()
        colour = self.jitter_color(self.pick(CAR_COLORS), 0.08)
        width = 1.8 if not van else 2.0
        sk = "car" if not van else "truck"
        ca, sa = np.cos(yaw), np.sin(yaw)
        body = _look(sk, Tex.CARPAINT, colour, 0.35, inst=inst)
        if van:
            length = max(length, 5.0)
            mb.box(x, y, z0 + 0.3, length, width, 1.9, yaw, param=(z0 + 1.35, z0 + 1.9, 0, 0, 0, 0), **body)
        else:
            mb.box(x, y, z0 + 0.3, length, width, 0.72, yaw, param=(0, 0), **body)
            off = self.rng.uniform(-0.35, -0.1)
            cabin = (x + ca * off, y + sa * off, z0 + 1.02, length * 0.55, width - 0.12, 0.5, yaw)
            mb.box(*cabin, **_look(sk, Tex.CARPAINT, colour, 0.3, param=(z0 + 1.0, z0 + 1.45, 0, 0, 0, 0), inst=inst))
        tire = _look(sk, Tex.TIRE, srgb(25, 25, 25), 0.1, inst=inst)
        for fx in (-0.32, 0.32):
            for fy in (-0.5, 0.5):
                wx = x + ca * fx * length - sa * fy * (width - 0.05)
                wy = y + sa * fx * length + ca * fy * (width - 0.05)
                mb.box(wx, wy, z0, 0.62, 0.2, 0.62, yaw, **tire)

    def person(self, x, y, yaw, z0=KERB_H) -> None:
        mb, inst = self.mb, self.mb.new_instance()
        h = self.rng.uniform(0.9, 1.1)
        for z, sx, sy, sz in ((z0, 0.34, 0.22, 0.85 * h), (z0 + 0.85 * h, 0.46, 0.26, 0.6 * h)):  # legs, torso
            mb.box(x, y, z, sx, sy, sz, yaw, **_look("person", Tex.CLOTH, self.pick(CLOTHES), 0.25, inst=inst))
        skin = _look("person", Tex.CLOTH, srgb(200, 160, 130), 0.25, inst=inst)
        mb.blob(x, y, z0 + 1.58 * h, 0.11, 0.11, 0.13, self.rng, jitter=0.05, **skin)

    def tree(self, x, y, z0=0.0, big=1.0) -> None:
        mb = self.mb
        trunk_h = self.rng.uniform(2.6, 4.0) * big
        bark = _look("trunk", Tex.BARK, srgb(90, 70, 50), 0.3)
        mb.cylinder(x, y, z0, self.rng.uniform(0.14, 0.26) * big, trunk_h + 0.5, n=6, cap=False, **bark)
        green = self.jitter_color(srgb(*self.pick([(70, 105, 40), (55, 90, 45), (95, 120, 45), (60, 80, 35)])), 0.15)
        leaves = _look("vegetation", Tex.FOLIAGE, green, 0.4)
        if self.rng.random() < 0.25:  # conifer
            r = self.rng.uniform(1.4, 2.4) * big
            for k in range(3):
                mb.cone(x, y, z0 + trunk_h * 0.6 + k * r * 0.9, r * (1 - 0.25 * k), r * 1.6, n=8, **leaves)
            return
        r = self.rng.uniform(1.8, 3.2) * big
        mb.blob(x, y, z0 + trunk_h + r * 0.7, r, r, r * self.rng.uniform(0.8, 1.1), self.rng, **leaves)
        if self.rng.random() < 0.5:
            dx, dy = self.rng.uniform(-0.8, 0.8, 2) * r
            mb.blob(x + dx, y + dy, z0 + trunk_h + r * 1.1, r * 0.7, r * 0.7, r * 0.6, self.rng, **leaves)

    def bush(self, x, y, z0=KERB_H) -> None:
        r = self.rng.uniform(0.5, 1.0)
        leaves = _look("vegetation", Tex.FOLIAGE, self.jitter_color(srgb(60, 95, 40)), 0.4)
        self.mb.blob(x, y, z0 + r * 0.6, r, r, r * 0.7, self.rng, **leaves)

    def lamp(self, base, toward_road) -> None:
        """Street lamp: pole, arm over the road, lamp head (light source at night)."""
        mb = self.mb
        h = self.rng.uniform(6.5, 8.0)
        metal = _look("pole", Tex.METAL, srgb(110, 112, 115), 0.45)
        mb.cylinder(base[0], base[1], KERB_H, 0.09, h, n=6, **metal)
        head = base + toward_road * 1.6
        mid = (base + head) / 2
        yaw = float(np.arctan2(toward_road[1], toward_road[0]))
        mb.box(mid[0], mid[1], KERB_H + h - 0.08, 1.7, 0.08, 0.08, yaw, **metal)
        bulb = _look("pole", Tex.LAMP, srgb(220, 220, 210), 0.5)
        mb.box(head[0], head[1], KERB_H + h - 0.25, 0.6, 0.3, 0.2, yaw, **bulb)
        self.lamps.append(np.array([head[0], head[1], KERB_H + h - 0.3]))

    def sign(self, pos, face_yaw) -> None:
        mb = self.mb
        h = self.rng.uniform(2.0, 2.6)
        mb.cylinder(pos[0], pos[1], KERB_H, 0.04, h, n=6, **_look("pole", Tex.METAL, srgb(150, 150, 155), 0.45))
        kind = int(self.rng.integers(4))
        fx, fy = np.cos(face_yaw) * 0.05, np.sin(face_yaw) * 0.05
        cx, cy, cz = pos[0] + fx, pos[1] + fy, KERB_H + h + 0.35
        if kind < len(SIGN_PLATES):
            shape, size, colour, rim = SIGN_PLATES[kind]
            face = _look("traffic_sign", Tex.SIGN, colour, 0.9, param=(cx, cy, cz) + rim)
            getattr(mb, shape)(cx, cy, cz, size, face_yaw, **face)
        else:  # rectangular information board
            board = _look("traffic_sign", Tex.SIGN, self.pick(BOARD_COLORS), 0.9, param=(cx, cy, cz, 9.0, 0, 0))
            mb.box(cx, cy, cz - 0.35, 0.05, 0.9, 0.7, face_yaw, **board)

    def traffic_light(self, pos, face_yaw) -> None:
        mb = self.mb
        mb.cylinder(pos[0], pos[1], KERB_H, 0.08, 4.2, n=6, **_look("pole", Tex.METAL, srgb(60, 62, 60), 0.4))
        fx, fy = np.cos(face_yaw) * 0.15, np.sin(face_yaw) * 0.15
        housing = _look("traffic_sign", Tex.METAL, srgb(35, 35, 30), 0.5)
        mb.box(pos[0] + fx, pos[1] + fy, KERB_H + 3.2, 0.25, 0.35, 1.0, face_yaw, **housing)

    def fence(self, p0, p1, height, kind) -> None:
        """kind: 'slats' (wood), 'metal' (bars), 'wall' (low wall), 'hedge'."""
        mb = self.mb
        d = p1 - p0
        length = float(np.linalg.norm(d))
        if length < 0.5:
            return
        yaw = float(np.arctan2(d[1], d[0]))
        mid = (p0 + p1) / 2
        if kind == "hedge":
            leaves = _look("vegetation", Tex.FOLIAGE, self.jitter_color(srgb(50, 85, 35)), 0.4)
            mb.box(mid[0], mid[1], KERB_H, length, 0.8, height, yaw, **leaves)
            return
        if kind == "wall":
            wall = _look("fence", Tex.CONCRETE, self.jitter_color(self.pick(FACADES)), 0.35)
            mb.box(mid[0], mid[1], KERB_H, length, 0.3, height, yaw, **wall)
            return
        slats = kind == "slats"
        colour = srgb(140, 100, 60) if slats else srgb(70, 90, 75)
        param = (0.16 if slats else 0.12, 0.25 if slats else 0.7, 0, 0, 0, 0)
        boards = _look("fence", Tex.FENCE, colour, 0.3, param=param)
        mb.box(mid[0], mid[1], KERB_H, length, 0.05, height, yaw, **boards)
        for t in np.arange(0.0, length + 1e-6, 2.5):
            q = p0 + d / length * t
            mb.box(q[0], q[1], KERB_H, 0.1, 0.1, height + 0.1, yaw, **_look("fence", Tex.METAL, colour, 0.35))

    def building(self, side: _Side, u0, u1, v0, depth, height, style) -> None:
        mb = self.mb
        width = u1 - u0
        c = side.p((u0 + u1) / 2, v0 + depth / 2)
        facade = self.jitter_color(self.pick(FACADES), 0.1)
        win = tuple(self.rng.uniform(lo, hi) for lo, hi in WINDOW_RANGES[style])
        if self.rng.random() < 0.08:
            win = (3.0, 3.0, 0.0, 0.0)  # blank wall
        bid = float(self.rng.integers(1, 1 << 20))
        wall = _look("building", Tex.WALL, facade, 0.3, param=win + (bid, self.rng.uniform(0.15, 0.6)))
        mb.box(c[0], c[1], KERB_H, width, depth, height, side.yaw, **wall)
        roof = _look("building", Tex.ROOF, self.jitter_color(self.pick(ROOFS), 0.1), 0.3)
        if style == "residential" and self.rng.random() < 0.7:
            pitch = self.rng.uniform(2.0, 3.5)
            mb.gable_roof(c[0], c[1], KERB_H + height, width + 0.4, depth + 0.4, pitch, side.yaw, **roof)
        elif self.rng.random() < 0.5:  # roof structure / parapet
            w2, d2 = width * self.rng.uniform(0.2, 0.5), depth * self.rng.uniform(0.2, 0.5)
            mb.box(c[0], c[1], KERB_H + height, w2, d2, self.rng.uniform(1.5, 3.5), side.yaw, **roof)

    # ---- blocks ----
    def block(self, bx0, by0, bx1, by1, district, streets) -> None:
        rng = self.rng
        sw = rng.uniform(2.5, 4.0)
        self.pavement(bx0, by0, bx1, by1, sw, district)
        lx, ly = bx1 - bx0, by1 - by0
        depth_max = float(np.clip(min(lx, ly) / 2 - sw - 1.0, 6.0, 20.0))
        sides = [
            _Side((bx0, by0), (1, 0), (0, 1), lx, streets["S"]),
            _Side((bx1, by1), (-1, 0), (0, -1), lx, streets["N"]),
            _Side((bx0, by1), (0, -1), (1, 0), ly, streets["W"]),
            _Side((bx1, by0), (0, 1), (-1, 0), ly, streets["E"]),
        ]
        for idx, side in enumerate(sides):
            self.sidewalk(side, sw)
            u_lo, u_hi = (sw, side.length - sw) if idx < 2 else (sw + depth_max, side.length - sw - depth_max)
            self.lots(side, u_lo, u_hi, sw, depth_max, district)
        # courtyard trees
        cx0, cy0 = bx0 + sw + depth_max + 2, by0 + sw + depth_max + 2
        cx1, cy1 = bx1 - sw - depth_max - 2, by1 - sw - depth_max - 2
        if cx1 > cx0 and cy1 > cy0:
            for _ in range(int(rng.integers(0, 4))):
                self.tree(rng.uniform(cx0, cx1), rng.uniform(cy0, cy1), KERB_H)

    def pavement(self, bx0, by0, bx1, by1, sw, district) -> None:
        """Kerbs, a sidewalk ring ``sw`` wide and the block's inner ground."""
        mb, rng = self.mb, self.rng
        paving = self.jitter_color(
            srgb(*self.pick([(150, 148, 142), (170, 160, 150), (140, 120, 115), (120, 125, 130)])), 0.06
        )
        kerb = _look("sidewalk", Tex.CONCRETE, srgb(160, 160, 155), 0.35)
        corners = [(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)]
        for k in range(4):
            (xa, ya), (xb, yb) = corners[k], corners[(k + 1) % 4]
            mb.quad([[xa, ya, 0], [xb, yb, 0], [xb, yb, KERB_H], [xa, ya, KERB_H]], **kerb)
        for rect in (
            (bx0, by0, bx1, by0 + sw),
            (bx0, by1 - sw, bx1, by1),
            (bx0, by0 + sw, bx0 + sw, by1 - sw),
            (bx1 - sw, by0 + sw, bx1, by1 - sw),
        ):
            tiles = _look("sidewalk", Tex.PAVING, paving, 0.3, param=(rng.uniform(0.4, 0.8),))
            mb.rect(*rect, KERB_H, tile=10.0, **tiles)
        inner = (bx0 + sw, by0 + sw, bx1 - sw, by1 - sw)
        ground_col = srgb(95, 120, 60) if district != "industrial" else srgb(120, 115, 95)
        mb.rect(*inner, KERB_H, tile=10.0, **_look("terrain", Tex.GRASS, self.jitter_color(ground_col), 0.4))

    def sidewalk(self, side: _Side, sw: float) -> None:
        rng, st = self.rng, side.street
        out = -side.w
        # lamps
        if st["lamps_here"]:
            u = rng.uniform(3, st["lamp_spacing"])
            while u < side.length - 3:
                self.lamp(side.p(u, 0.5), out)
                side.taken.append((u, 0.6))
                u += st["lamp_spacing"]
        if st["trees"]:
            u = rng.uniform(2, st["tree_spacing"])
            while u < side.length - 2:
                if side.free(u, 1.5):
                    q = side.p(u, 1.2)
                    self.tree(q[0], q[1], KERB_H)
                    side.taken.append((u, 1.0))
                u += st["tree_spacing"] * rng.uniform(0.85, 1.15)
        for end_u, face in ((1.5, side.yaw), (side.length - 1.5, side.yaw + np.pi)):
            if rng.random() < 0.45 and side.free(end_u, 0.8):
                self.sign(side.p(end_u, 0.4), face)
                side.taken.append((end_u, 0.5))
            elif rng.random() < 0.12 and side.free(end_u, 0.8):
                self.traffic_light(side.p(end_u, 0.5), face)
                side.taken.append((end_u, 0.5))
        self.furniture(side, sw)
        for _ in range(int(rng.poisson(0.6))):
            u = self.uni(2, side.length - 2)
            if side.free(u, 0.6):
                q = side.p(u, self.uni(0.9, sw - 0.4))
                self.person(q[0], q[1], side.yaw + (0 if rng.random() < 0.5 else np.pi))
                side.taken.append((u, 0.4))

    def furniture(self, side: _Side, sw: float) -> None:
        """Litter bins and benches at the back of the sidewalk, now and then a bus shelter."""
        rng, mb = self.rng, self.mb
        for _ in range(int(rng.integers(0, 3))):
            u = self.uni(3, side.length - 3)
            if side.free(u, 1.0):
                q = side.p(u, sw - 0.6)
                if rng.random() < 0.5:
                    colour = srgb(*self.pick([(40, 90, 50), (90, 90, 95), (150, 120, 40)]))
                    mb.cylinder(q[0], q[1], KERB_H, 0.28, 0.9, n=8, **_look("other_object", Tex.CONCRETE, colour, 0.3))
                else:
                    seat = _look("other_object", Tex.FENCE, srgb(120, 85, 55), 0.3, param=(0.12, 0.2))
                    mb.box(q[0], q[1], KERB_H + 0.4, 1.6, 0.45, 0.08, side.yaw, **seat)
                    frame = _look("other_object", Tex.METAL, srgb(60, 60, 60), 0.3)
                    mb.box(q[0], q[1], KERB_H, 1.4, 0.35, 0.4, side.yaw, **frame)
                side.taken.append((u, 1.0))
        if rng.random() < 0.35:  # bus shelter
            u = self.uni(8, max(side.length - 8, 8.5))
            if side.free(u, 2.5) and sw > 2.8:
                q = side.p(u, sw - 0.9)
                shelter = _look("other_structure", Tex.METAL, srgb(90, 110, 120), 0.3)
                mb.box(q[0], q[1], KERB_H, 3.0, 1.2, 2.4, side.yaw, **shelter)
                side.taken.append((u, 1.8))

    def lots(self, side: _Side, u_lo, u_hi, sw, depth_max, district) -> None:
        rng = self.rng
        u = u_lo
        while u < u_hi - 4:
            (w_lo, w_hi), kind, p_kind, other_kind = LOT_KINDS[district]
            width = rng.uniform(w_lo, w_hi)
            if p_kind is not None and not rng.random() < p_kind:
                kind = other_kind
            width = min(width, u_hi - u)
            u1 = u + width
            if kind == "building":
                v0, depth = sw + rng.uniform(0, 0.6), depth_max * rng.uniform(0.75, 1.0)
                self.building(side, u + 0.1, u1 - 0.1, v0, depth, rng.uniform(12, 32), "downtown")
            elif kind == "house":
                self.house_lot(side, u, width, sw, depth_max)
            elif kind == "warehouse":
                self.warehouse_lot(side, u, width, sw, depth_max)
            elif kind == "yard":
                self.yard_lot(side, u, width, sw, depth_max)
            else:
                self.green_lot(side, u, width, sw, depth_max, kind)
            u = u1

    def front_fence(self, side: _Side, u, u1, sw, heights, kinds) -> None:
        """Fence along a lot's street edge: height uniform in ``heights``; kind ``kinds`` or one picked from it."""
        front = sw + 0.3
        p0, p1, height = side.p(u + 0.2, front), side.p(u1 - 0.2, front), self.rng.uniform(*heights)
        self.fence(p0, p1, height, kinds if isinstance(kinds, str) else self.pick(kinds))

    def house_lot(self, side: _Side, u, width, sw, depth_max) -> None:
        rng, u1 = self.rng, u + width
        gap = rng.uniform(1.5, 3.0)
        setback = rng.uniform(3.0, 6.0)
        depth = min(rng.uniform(8, 12), depth_max - setback)
        if depth > 5 and width - 2 * gap > 6:
            self.building(side, u + gap, u1 - gap, sw + setback, depth, rng.uniform(5, 8.5), "residential")
        if rng.random() < 0.55:
            self.front_fence(side, u, u1, sw, (0.9, 1.5), ["slats", "hedge", "wall", "metal"])
        if rng.random() < 0.5:
            q = side.p(u + self.uni(1, max(width - 1, 1.5)), sw + setback / 2 + 0.3)
            (self.tree if rng.random() < 0.5 else self.bush)(q[0], q[1], KERB_H)

    def warehouse_lot(self, side: _Side, u, width, sw, depth_max) -> None:
        rng, u1 = self.rng, u + width
        setback = rng.uniform(4, 9)
        depth = depth_max - setback
        if depth > 6:
            self.building(side, u + 1, u1 - 1, sw + setback, depth, rng.uniform(6, 11), "industrial")
        self.front_fence(side, u, u1, sw, (1.6, 2.2), "metal")
        if rng.random() < 0.5 and setback > 6.5:
            q = side.p(u + width / 2, sw + setback / 2 + 0.2)
            self.car(q[0], q[1], side.yaw, 6.0, van=True, z0=KERB_H)

    def yard_lot(self, side: _Side, u, width, sw, depth_max) -> None:
        rng, u1 = self.rng, u + width
        self.front_fence(side, u, u1, sw, (1.8, 2.4), ["metal", "wall"])
        for _ in range(int(rng.integers(1, 4))):
            q = side.p(self.uni(u + 3, u1 - 3), sw + self.uni(4, depth_max - 2))
            size = (rng.uniform(2, 6), rng.uniform(2, 3), rng.uniform(1.5, 2.6), rng.uniform(0, np.pi))
            colour = srgb(*self.pick([(150, 60, 40), (40, 80, 140), (120, 120, 110)]))
            self.mb.box(q[0], q[1], KERB_H, *size, **_look("other_structure", Tex.METAL, colour, 0.4))

    def green_lot(self, side: _Side, u, width, sw, depth_max, kind) -> None:
        """A park, garden or plaza: trees, bushes, now and then a person."""
        rng, u1 = self.rng, u + width
        if kind == "park" and rng.random() < 0.5:
            self.front_fence(side, u, u1, sw, (0.6, 1.0), ["hedge", "metal"])
        for _ in range(int(rng.integers(1, 5))):
            q = side.p(self.uni(u + 1.5, u1 - 1.5), sw + self.uni(2, depth_max))
            self.tree(q[0], q[1], KERB_H, big=rng.uniform(0.9, 1.3))
        for _ in range(int(rng.integers(0, 4))):
            q = side.p(self.uni(u + 1, u1 - 1), sw + self.uni(1.5, depth_max))
            self.bush(q[0], q[1])
        if rng.random() < 0.3:
            q = side.p(self.uni(u + 1, u1 - 1), sw + self.uni(1.5, depth_max))
            self.person(q[0], q[1], rng.uniform(0, 2 * np.pi))

    def populate(self) -> None:
        L, rng = self.L, self.rng
        n = len(L.xs)
        for st in self.streets.values():
            st["lamp_side"] = int(rng.integers(2))
        self.ground()
        self.street_marks()
        self.parked_cars()
        weights = np.array([0.32, 0.34, 0.16, 0.18])
        names = ["downtown", "residential", "industrial", "park"]
        for i in range(n - 1):
            for j in range(n - 1):
                district = names[int(rng.choice(4, p=weights))]
                bx0, bx1 = L.xs[i] + L.hx[i], L.xs[i + 1] - L.hx[i + 1]
                by0, by1 = L.ys[j] + L.hy[j], L.ys[j + 1] - L.hy[j + 1]
                streets = {}
                # code 1: the block lies on the +side of the street's line, 0: on the -side
                for key, skey, code in (
                    ("S", ("y", j), 1),
                    ("N", ("y", j + 1), 0),
                    ("W", ("x", i), 1),
                    ("E", ("x", i + 1), 0),
                ):
                    st = dict(self.streets[skey])
                    st["lamps_here"] = st["lamps_both"] or st["lamp_side"] == code
                    streets[key] = st
                self.block(bx0, by0, bx1, by1, district, streets)
