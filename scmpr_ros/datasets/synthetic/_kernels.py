"""Numba kernels of the town renderer: per-pixel materials, lighting, fog and tone curve.

Radiance = albedo * (ambient(n_z) + lights) + emission; fog ``f = exp(-t / D)``; tone curve
``1 - exp(-k x)`` then gamma 1/2.2; sensor noise from a per-pixel hash (deterministic, thread-safe).
Texture kinds match ``mesh.Tex``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numba import njit, prange

# numba tries TBB first and warns when the installed TBB is too old; it then uses OpenMP/workqueue.
warnings.filterwarnings("ignore", message="The TBB threading layer requires TBB version")

ASPHALT, PAINT, PAVING, WALL, ROOF, GRASS, FOLIAGE, BARK, METAL, SIGN, CARPAINT, CLOTH, FENCE, CONCRETE, LAMP, TIRE = (
    range(16)
)
DAY, NIGHT, WINTER = 0, 1, 2
KERB_H = 0.15


@njit(cache=True, inline="always")
def _vnoise(tab, x, y):
    p = tab.shape[0]
    fx = math.floor(x)
    fy = math.floor(y)
    tx = x - fx
    ty = y - fy
    ix = int(fx) % p
    iy = int(fy) % p
    ix1 = (ix + 1) % p
    iy1 = (iy + 1) % p
    tx = tx * tx * (3.0 - 2.0 * tx)
    ty = ty * ty * (3.0 - 2.0 * ty)
    a = tab[ix, iy]
    b = tab[ix1, iy]
    c = tab[ix, iy1]
    d = tab[ix1, iy1]
    return a + (b - a) * tx + (c - a) * ty + (a - b - c + d) * tx * ty


@njit(cache=True, inline="always")
def _hash(a, b, c):
    h = (np.int64(a) * 73856093) ^ (np.int64(b) * 19349663) ^ (np.int64(c) * 83492791)
    h &= 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h ^= h >> 16
    return (h & 0xFFFF) / 65536.0


@njit(cache=True)
def _surface(tex, col, prm, px, py, pz, nx, ny, nz, tab0, tab1):
    """(r, g, b, glass, lit, lidar_reflectance_factor) of one hit."""
    r, g, b = col[0], col[1], col[2]
    f = 1.0
    glass = False
    lit = False
    refl = 1.0
    if tex == WALL:
        if abs(nz) < 0.5:
            u = -ny * px + nx * py
            v = pz - KERB_H
            cu = u / prm[1]
            cv = v / prm[0]
            fu = cu - math.floor(cu)
            fv = cv - math.floor(cv)
            if abs(fu - 0.5) < prm[2] * 0.5 and abs(fv - 0.55) < prm[3] * 0.5 and v > 0.6:
                glass = True
                refl = 0.15
                lit = _hash(math.floor(cu), math.floor(cv), int(prm[4])) < prm[5]
            else:
                f = 0.88 + 0.2 * _vnoise(tab0, u * 0.4, v * 0.4)
                if fv < 0.05:
                    f *= 0.75
        else:
            f = 0.55 + 0.1 * _vnoise(tab0, px * 0.5, py * 0.5)
    elif tex == CARPAINT:
        if prm[1] > prm[0] and abs(nz) < 0.6 and pz > prm[0] and pz < prm[1]:
            glass = True
            refl = 0.2
    elif tex == ASPHALT:
        f = (0.78 + 0.4 * _vnoise(tab0, px * 1.7, py * 1.7)) * (0.8 + 0.4 * _vnoise(tab1, px * 0.07, py * 0.07))
    elif tex == PAINT:
        f = 0.8 + 0.25 * _vnoise(tab0, px * 2.5, py * 2.5)
    elif tex == PAVING:
        ts = max(prm[0], 0.2)
        gu = px / ts
        gv = py / ts
        fu = gu - math.floor(gu)
        fv = gv - math.floor(gv)
        if min(min(fu, 1.0 - fu), min(fv, 1.0 - fv)) < 0.05:
            f = 0.6
        else:
            f = 0.88 + 0.24 * _hash(math.floor(gu), math.floor(gv), 0)
    elif tex == GRASS:
        f = 0.7 + 0.6 * _vnoise(tab0, px * 0.8, py * 0.8)
        if _vnoise(tab1, px * 0.06, py * 0.06) > 0.72:
            r, g, b = r * 0.4 + 0.09, g * 0.4 + 0.06, b * 0.4 + 0.03
    elif tex == FOLIAGE:
        f = 0.45 + 1.0 * _vnoise(tab0, px * 2.3 + pz * 1.7, py * 2.3 - pz * 1.3)
    elif tex == BARK:
        f = 0.75 + 0.5 * _vnoise(tab0, pz * 5.0, (px + py) * 3.0)
    elif tex in (ROOF, CONCRETE, METAL):
        f = 0.85 + 0.3 * _vnoise(tab0, px * 1.1 + pz, py * 1.1 - pz)
        if tex == ROOF and (pz * 3.0 - math.floor(pz * 3.0)) < 0.15:
            f *= 0.8
    elif tex == FENCE:
        u = -ny * px + nx * py
        cu = u / max(prm[0], 0.05)
        if cu - math.floor(cu) < prm[1]:
            f = 0.35
    elif tex == SIGN:
        dx, dy, dz = px - prm[0], py - prm[1], pz - prm[2]
        if math.sqrt(dx * dx + dy * dy + dz * dz) > prm[3]:
            if prm[4] == 1.0:
                r, g, b = 0.55, 0.02, 0.02
            elif prm[4] == 2.0:
                r, g, b = 0.85, 0.85, 0.85
    if glass:
        r, g, b = 0.025, 0.032, 0.04
    else:
        r, g, b = r * f, g * f, b * f
    return r, g, b, glass, lit, refl


@njit(cache=True, parallel=True)
def lidar_reflectance_factor(tri, px, tex, param, color, nrm, tab0, tab1):
    """Per-point reflectance factor (glass returns are weak) for LiDAR hits."""
    out = np.ones(len(tri), dtype=np.float32)
    for i in prange(len(tri)):
        k = tri[i]
        res = _surface(
            tex[k], color[k], param[k], px[i, 0], px[i, 1], px[i, 2], nrm[i, 0], nrm[i, 1], nrm[i, 2], tab0, tab1
        )
        out[i] = res[5]
    return out


@njit(cache=True, inline="always")
def _sky(dx, dy, dz, zen, hor, sun, with_sun):
    up = min(max(dz * 3.0, 0.0), 1.0)
    r = hor[0] * (1 - up) + zen[0] * up
    g = hor[1] * (1 - up) + zen[1] * up
    b = hor[2] * (1 - up) + zen[2] * up
    if with_sun:
        cs = max(dx * sun[0] + dy * sun[1] + dz * sun[2], 0.0)
        glow = 0.5 * cs**60
        if cs > 0.9995:
            glow += 6.0
        r += glow
        g += 0.9 * glow
        b += 0.7 * glow
    return r, g, b


@njit(cache=True, parallel=True)
def shade_radiance(
    cond,
    t,
    tri,
    nrm,
    dirs,
    origin,
    tex,
    color,
    param,
    tab0,
    tab1,
    sun,
    vis,
    zen,
    hor,
    fog,
    fog_dist,
    heads,
    head_axis,
    lamps,
):
    """Linear radiance (P,3) of every pixel under one condition."""
    npx = len(t)
    out = np.empty((npx, 3), dtype=np.float32)
    warm_r, warm_g, warm_b = 1.0, 0.78, 0.45
    cos_out, cos_in = math.cos(math.radians(32.0)), math.cos(math.radians(12.0))
    for i in prange(npx):
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        k = tri[i]
        if k < 0:
            r, g, b = _sky(dx, dy, dz, zen, hor, sun, cond == DAY)
            out[i, 0], out[i, 1], out[i, 2] = r, g, b
            continue
        ti = t[i]
        px, py, pz = origin[0] + dx * ti, origin[1] + dy * ti, origin[2] + dz * ti
        nx, ny, nz = nrm[i, 0], nrm[i, 1], nrm[i, 2]
        tk = tex[k]
        ar, ag, ab, glass, lit, _ = _surface(tk, color[k], param[k], px, py, pz, nx, ny, nz, tab0, tab1)
        if cond == DAY:
            ndl = max(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0) * vis[i]
            amb = 0.6 + 0.4 * nz
            bounce = 0.06 * (1.0 - nz)
            r = ar * (0.30 * amb + bounce + 1.05 * ndl)
            g = ag * (0.34 * amb + bounce + 1.0 * ndl)
            b = ab * (0.42 * amb + bounce + 0.9 * ndl)
            if glass:
                dn = dx * nx + dy * ny + dz * nz
                sr, sg, sb = _sky(dx - 2 * dn * nx, dy - 2 * dn * ny, dz - 2 * dn * nz, zen, hor, sun, True)
                r += 0.25 * sr
                g += 0.25 * sg
                b += 0.25 * sb
        elif cond == WINTER:
            snow = 0.0
            if tk in (GRASS, PAVING, ROOF, CONCRETE, WALL, CARPAINT, FENCE, METAL):
                if nz > 0.55:
                    snow = 0.92
            elif tk == FOLIAGE:
                if _vnoise(tab1, px * 1.5 + pz, py * 1.5) > 0.35:
                    snow = min(max((nz + 0.2) * 1.6, 0.0), 1.0) * 0.85
            elif tk in (ASPHALT, PAINT):
                snow = min(
                    max(
                        (_vnoise(tab0, px * 0.9, py * 0.9) * 0.6 + _vnoise(tab1, px * 0.2, py * 0.2) * 0.4 - 0.45)
                        * 3.0,
                        0.0,
                    ),
                    0.75,
                )
            ar = ar * (1 - snow) + 0.82 * snow
            ag = ag * (1 - snow) + 0.84 * snow
            ab = ab * (1 - snow) + 0.88 * snow
            amb = 0.55 + 0.45 * nz
            r, g, b = ar * 0.85 * amb, ag * 0.87 * amb, ab * 0.92 * amb
            if glass:
                r += 0.2 * hor[0]
                g += 0.2 * hor[1]
                b += 0.2 * hor[2]
        else:  # night
            amb = 0.5 + 0.5 * nz
            lr, lg, lb = 0.004 * amb, 0.005 * amb, 0.009 * amb
            for h in range(heads.shape[0]):
                lx, ly, lz = heads[h, 0] - px, heads[h, 1] - py, heads[h, 2] - pz
                dist = math.sqrt(lx * lx + ly * ly + lz * lz) + 1e-6
                lx, ly, lz = lx / dist, ly / dist, lz / dist
                cos_a = -(lx * head_axis[0] + ly * head_axis[1] + lz * head_axis[2])
                cone = min(max((cos_a - cos_out) / (cos_in - cos_out), 0.0), 1.0)
                cone = cone * cone * (3.0 - 2.0 * cone)
                if cos_a > 0:
                    cone += 0.04
                ndl = max(nx * lx + ny * ly + nz * lz, 0.0)
                e = 25.0 * cone * ndl / max(dist * dist, 1.0)
                lr += 0.95 * e
                lg += 0.95 * e
                lb += e
            for m in range(lamps.shape[0]):
                lx, ly, lz = lamps[m, 0] - px, lamps[m, 1] - py, lamps[m, 2] - pz
                d2 = lx * lx + ly * ly + lz * lz
                dd = math.sqrt(d2) + 1e-6
                ndl = max((nx * lx + ny * ly + nz * lz) / dd, 0.0)
                down = min(max((lz / dd - 0.1) / 0.5, 0.0), 1.0)
                e = 12.0 * ndl * down / (d2 + 1.0)
                lr += warm_r * e
                lg += warm_g * e
                lb += warm_b * e
            r, g, b = ar * lr, ag * lg, ab * lb
            if lit:
                r += 0.35 * warm_r
                g += 0.35 * warm_g
                b += 0.35 * warm_b
            if tk == LAMP:
                r, g, b = 4.0 * warm_r, 4.0 * warm_g, 4.0 * warm_b
        f = math.exp(-ti / fog_dist)
        out[i, 0] = r * f + fog[0] * (1 - f)
        out[i, 1] = g * f + fog[1] * (1 - f)
        out[i, 2] = b * f + fog[2] * (1 - f)
    return out


GAUSS_TABLE = np.random.default_rng(20240607).standard_normal(1 << 16).astype(np.float32)
GAMMA_LUT_SIZE = 4096
# gamma curve indexed by sqrt(v): fine steps near black where the eye (and the curve) is steep
GAMMA_LUT = ((np.arange(GAMMA_LUT_SIZE, dtype=np.float64) / (GAMMA_LUT_SIZE - 1)) ** 2) ** (1 / 2.2)
GAMMA_LUT = GAMMA_LUT.astype(np.float32)


@njit(cache=True, inline="always")
def _gauss(i, c, seed, table):
    return table[int(_hash(i, seed, c) * 65536.0) & 0xFFFF]


@njit(cache=True, parallel=True)
def finish(rad, k_exp, contrast_mix, noise_sd, shot, flakes, seed, gauss, gamma_lut):
    """Tone curve, contrast reduction towards the mean, gamma, noise -> uint8 (P,3)."""
    npx = rad.shape[0]
    tone = np.empty_like(rad)
    for i in prange(npx):
        for c in range(3):
            tone[i, c] = 1.0 - math.exp(-k_exp * rad[i, c])
    mean = np.zeros(3)
    if contrast_mix > 0:
        for c in range(3):
            mean[c] = tone[:, c].mean()
    out = np.empty((npx, 3), dtype=np.uint8)
    top = gamma_lut.shape[0] - 1
    for i in prange(npx):
        flake = flakes > 0 and _hash(i, seed, 99) < flakes
        luma = _gauss(i, 3, seed, gauss) * noise_sd * 0.5
        for c in range(3):
            v = tone[i, c] * (1 - contrast_mix) + mean[c] * contrast_mix
            if flake:
                v = min(v + 0.35, 1.0)
            v = gamma_lut[int(math.sqrt(min(max(v, 0.0), 1.0)) * top + 0.5)]
            v += _gauss(i, c, seed, gauss) * (noise_sd + shot * math.sqrt(v)) + luma
            v = min(max(v, 0.0), 1.0)
            out[i, c] = np.uint8(v * 255.0 + 0.5)
    return out


@njit(cache=True, parallel=True)
def make_rays(origin, R, dirs_T):
    """(N,6) float32 rays: origin and R @ direction for directions given as (3,N)."""
    n = dirs_T.shape[1]
    rays = np.empty((n, 6), dtype=np.float32)
    for i in prange(n):
        dx, dy, dz = dirs_T[0, i], dirs_T[1, i], dirs_T[2, i]
        rays[i, 0], rays[i, 1], rays[i, 2] = origin[0], origin[1], origin[2]
        rays[i, 3] = R[0, 0] * dx + R[0, 1] * dy + R[0, 2] * dz
        rays[i, 4] = R[1, 0] * dx + R[1, 1] * dy + R[1, 2] * dz
        rays[i, 5] = R[2, 0] * dx + R[2, 1] * dy + R[2, 2] * dz
    return rays


@njit(cache=True, parallel=True)
def post_cast(prim, normals, rays):
    """Triangle id per ray (-1 = no hit) and normals flipped to face the ray (in place)."""
    n = prim.shape[0]
    tri = np.empty(n, dtype=np.int64)
    for i in prange(n):
        if prim[i] == 4294967295:
            tri[i] = -1
        else:
            tri[i] = prim[i]
            if normals[i, 0] * rays[i, 3] + normals[i, 1] * rays[i, 4] + normals[i, 2] * rays[i, 5] > 0:
                normals[i, 0] = -normals[i, 0]
                normals[i, 1] = -normals[i, 1]
                normals[i, 2] = -normals[i, 2]
    return tri
