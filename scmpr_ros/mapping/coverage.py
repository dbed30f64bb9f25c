"""Does a map cover the queries it is evaluated with?  Refuse before scoring, not after.

``scmpr evaluate`` with the map of another town (or sequence) still produces Recall@N numbers, and
they mean nothing.  ``check_map_covers_queries`` compares what the map records about where it was
built (its ``metadata``: dataset kind, town, sequence; see ``dataset_identity``) with the queries'
dataset, and measures how far the queries' ground-truth positions are from the nearest map
viewpoint; it raises ``MapCoverageError`` (telling the user about ``--force``) when either says that
the map is of another place.

Identity, compared only where both sides record it:

* ``dataset_kind`` (kitti | kitti360): a map of one kind never covers queries of the other;
* ``town``: the synthetic town's seed and LiDAR model (``synth_manifest.yaml``), ``"synthetic seed 3, hdl64e
  LiDAR"`` (``"synthetic seed 3"`` for the uniform sensor, as maps written before the choice record it);
* ``sequence``: when the queries' info lists ``same_place`` (the sequences known to drive through
  one place: every pass of a synthetic town), the map's sequence must be one of them.  Without that
  list (real KITTI / KITTI-360, where sequences may or may not overlap) only the geometry decides.

Geometry: the median over the queries of the distance (3-D, metres, in the shared world frame) to
the nearest map viewpoint must be at most ``max_gap_m`` (``evaluate`` passes its success threshold:
when more than half of the queries have no viewpoint within it, Recall@N measures the map, not the model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.errors import ScmprError

#: queries sampled for the distance check (evenly along the list: the median does not need them all)
MAX_CHECKED_QUERIES = 4096
_CHUNK = 1 << 14
FORCE_HINT = "pass --force to evaluate anyway"


class MapCoverageError(ScmprError):
    """The map is of another place than the queries (other town, sequence or dataset kind, or far away)."""


def dataset_identity(root: str | Path, sequences: Iterable[str] | None = None) -> dict[str, Any]:
    """What identifies where a dataset's sequences were recorded, in the keys ``check_map_covers_queries``
    compares: ``dataset`` (resolved root), ``dataset_kind``, ``town`` (synthetic towns only),
    ``sequences`` (the given ones), ``same_place`` (synthetic towns: all their sequences).
    ``build_map`` records ``dataset``, ``dataset_kind``, ``town`` and ``sequence`` in the map's metadata."""
    from scmpr_ros.datasets import detect_kind
    from scmpr_ros.datasets.synthetic import read_manifest

    root = Path(root)
    info: dict[str, Any] = {"dataset": str(root.resolve()), "dataset_kind": detect_kind(root)}
    if sequences is not None:
        info["sequences"] = [str(s) for s in sequences]
    if (root / "synth_manifest.yaml").is_file():
        manifest = read_manifest(root)
        sensor = "" if manifest["lidar"] == "uniform" else f", {manifest['lidar']} LiDAR"  # uniform: as before
        info["town"] = f"synthetic seed {int(manifest['seed'])}{sensor}"
        info["same_place"] = sorted(str(k) for k in manifest["sequences"])
    return info


def _finite_xyz(a: Any, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise MapCoverageError(f"{what}: expected (N, 3) positions, got shape {a.shape}")
    if a.shape[1] == 2:
        a = np.concatenate([a, np.zeros((len(a), 1))], axis=1)
    a = a[:, :3]
    return a[np.isfinite(a).all(axis=1)]


def nearest_distances(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) distance from each point to its nearest reference point (exact, chunked; no extra library)."""
    points = np.asarray(points, dtype=np.float64)
    ref = np.unique(np.round(np.asarray(reference, dtype=np.float64), 2), axis=0)  # yaw variants share a spot
    out = np.full(len(points), np.inf)
    if not len(ref) or not len(points):
        return out
    centre = ref.mean(axis=0)
    ref = ref - centre
    pts = points - centre
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    rows = max(1, _CHUNK // 64)
    for s in range(0, len(pts), rows):
        q = pts[s : s + rows]
        q_sq = np.einsum("ij,ij->i", q, q)[:, None]
        best = np.full(len(q), np.inf)
        for t in range(0, len(ref), _CHUNK):
            d2 = q_sq + ref_sq[None, t : t + _CHUNK] - 2.0 * (q @ ref[t : t + _CHUNK].T)
            best = np.minimum(best, d2.min(axis=1))
        out[s : s + rows] = np.sqrt(np.maximum(best, 0.0))
    return out


def _describe(info: Mapping[str, Any], seq_key: str) -> str:
    parts = []
    if info.get("town"):
        parts.append(str(info["town"]))
    if info.get("dataset_kind"):
        parts.append(f"a {info['dataset_kind']} dataset")
    if info.get("dataset"):
        parts.append(f"at {info['dataset']}")
    seq = info.get(seq_key)
    if seq:
        parts.append(f"sequence{'s' if isinstance(seq, list) and len(seq) > 1 else ''} " + _seq_text(seq))
    return ", ".join(parts) or "(nothing recorded)"


def _seq_text(seq: Any) -> str:
    return ", ".join(map(str, seq)) if isinstance(seq, (list, tuple)) else str(seq)


def check_map_covers_queries(
    map_poses_xyz: Any,
    query_xyz: Any,
    map_metadata: Mapping[str, Any] | None,
    query_dataset_info: Mapping[str, Any] | None,
    max_gap_m: float,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Raise MapCoverageError unless the map covers the queries; returns what was measured.

    ``map_poses_xyz``: (M, 3) (or (M, 7) poses) viewpoint positions of the map; ``query_xyz``: (N, 3)
    ground-truth positions of the queries, same world frame (rows with NaN are ignored);
    ``map_metadata``: ``MapData.metadata``; ``query_dataset_info``: ``dataset_identity(queries_dir,
    sequences)`` or any mapping with its keys; ``max_gap_m``: largest acceptable median distance.
    ``force``: report the problems in the returned ``problems`` list instead of raising."""
    if not (np.isfinite(max_gap_m) and max_gap_m > 0):
        raise MapCoverageError(f"max_gap_m must be a positive number of metres, got {max_gap_m}")
    meta = dict(map_metadata or {})
    query = dict(query_dataset_info or {})
    problems: list[str] = []
    map_desc, query_desc = _describe(meta, "sequence"), _describe(query, "sequences")

    for key, what in (("dataset_kind", "dataset kind"), ("town", "town")):
        a, b = meta.get(key), query.get(key)
        if a and b and str(a) != str(b):
            problems.append(f"the map's {what} is {a!r} but the queries' is {b!r}")
    same_place = query.get("same_place")
    map_seq = meta.get("sequence")
    if map_seq and same_place and str(map_seq) not in {str(s) for s in same_place}:
        problems.append(
            f"the map is of sequence {map_seq}, which is not one of the sequences that drive through the "
            f"queries' place ({_seq_text(list(same_place))})"
        )

    map_xyz = _finite_xyz(map_poses_xyz, "map viewpoint positions")
    q = _finite_xyz(query_xyz, "query positions")
    report: dict[str, Any] = {
        "map_viewpoints": int(len(map_xyz)),
        "queries": int(len(q)),
        "max_gap_m": float(max_gap_m),
        "median_gap_m": None,
        "within_max_gap": None,
        "map": map_desc,
        "queries_from": query_desc,
    }
    if not len(map_xyz):
        problems.append("the map has no viewpoint with a finite position")
    elif len(q):
        if len(q) > MAX_CHECKED_QUERIES:
            q = q[np.linspace(0, len(q) - 1, MAX_CHECKED_QUERIES).round().astype(int)]
        gaps = nearest_distances(q, map_xyz)
        median = float(np.median(gaps))
        within = float(np.mean(gaps <= max_gap_m))
        report.update(median_gap_m=round(median, 3), within_max_gap=round(within, 4))
        if median > max_gap_m:
            problems.append(
                f"the median distance from a query's ground-truth position to the nearest map viewpoint is "
                f"{median:.1f} m, more than {max_gap_m:g} m (only {within:.0%} of the {len(q)} queries checked "
                f"are within {max_gap_m:g} m of a viewpoint), so Recall@N would not measure place recognition"
            )
    report["problems"] = problems
    if problems and not force:
        raise MapCoverageError(
            "the map does not cover the queries: "
            + "; ".join(problems)
            + f".  Map: {map_desc}.  Queries: {query_desc}.  Use the map built from the queries' town and "
            f"sequence (`scmpr build-map`), or {FORCE_HINT}"
        )
    return report
