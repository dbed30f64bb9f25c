"""``scmpr evaluate``: Recall@N of camera queries against a LiDAR map, per condition, JSON + PNGs.

Database = the map's viewpoints (LiDAR poses in the map frame); queries = camera frames of another
pass or condition, each run through the same :class:`PlaceRecognizer` the ROS localizer uses (vector
search + α·cos + β·ψ re-rank).  Ground truth = the query frame's LiDAR pose (camera pose where the
dataset has no LiDAR extrinsics), so query and database positions refer to the same sensor.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scmpr_ros.config import LIMITS
from scmpr_ros.errors import ScmprError
from scmpr_ros.evaluation.filtering import check_modes, filter_sequence, filtered_figures
from scmpr_ros.geometry import heading_of, positions_of
from scmpr_ros.io_utils import atomic_write_text
from scmpr_ros.retrieval.metrics import DEFAULT_NS, recall_at_n

if TYPE_CHECKING:
    from scmpr_ros.config import ScmprConfig

EXTRA_CANDIDATES_EXCLUDE = 40  # more hypotheses asked for when exclude-recent drops some


class EvaluationError(ScmprError):
    """Evaluation inputs that do not fit together."""


def query_sequences(queries_dir: Path, sequences: Sequence[str] | None, map_meta: dict) -> list[tuple[str, str]]:
    """[(sequence, condition)] to evaluate: the given ones, else the query passes of a synthetic
    manifest, else every sequence except the map's."""
    manifest = None
    if (queries_dir / "synth_manifest.yaml").is_file():
        from scmpr_ros.datasets.synthetic import read_manifest

        manifest = read_manifest(queries_dir)
    cond_of: dict[str, str] = {}
    if manifest is not None:
        cond_of = {str(k): str(v.get("condition", "day")) for k, v in manifest["sequences"].items()}
    if sequences:
        return [(s, cond_of.get(s, "day")) for s in sequences]
    if manifest is not None:
        qs = [str(k) for k, v in manifest["sequences"].items() if v.get("pass") == "query"]
        if qs:
            return [(s, cond_of[s]) for s in qs]
    from scmpr_ros.datasets import list_sequences

    map_seq = str(map_meta.get("sequence", ""))
    names = [s for s in list_sequences(queries_dir) if s != map_seq]
    if not names:
        raise EvaluationError(f"{queries_dir}: no query sequence found; name one with --sequence")
    return [(s, "day") for s in names]


def _query_pose(seq: Any, i: int) -> np.ndarray:
    T = seq.poses_velo[i]
    if not np.isfinite(T).all():
        T = seq.poses_cam[i]
    return T


def evaluate(
    model_path: str | Path,
    map_path: str | Path,
    queries_dir: str | Path,
    sequences: Sequence[str] | None = None,
    *,
    threshold_m: float = 5.0,
    yaw_gate_deg: float | None = None,
    exclude_recent_s: float | None = None,
    map_sequence: str | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    frame_stride: int = 1,
    max_queries: int = 0,
    ns: Sequence[int] = DEFAULT_NS,
    config_paths: Sequence[str | Path] = (),
    threads: int = 0,
    batch_size: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
    beta_sweep: Sequence[float] = (),
    force: bool = False,
    filter_mode: str = "none",
    odometry: str = "drift",
) -> dict[str, Any]:
    """Run every query through the recognizer and score it; returns the JSON-ready summary.

    ``beta_sweep``: also re-rank the same candidates (the index's top ``rerank_k``) with each of these
    β (α from the config) and report Recall@N per β and condition in ``summary["beta_sweep"]`` — to
    choose ``retrieval.beta`` on a validation town with one encoder pass.

    ``filter_mode="mcl"`` also runs the localization filter along each query sequence in time order
    (``odometry``: simulated drift odometry or none = image only) and reports ``summary["filtered"]``
    (evaluation/filtering.py)."""
    from scmpr_ros.config import load_config
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.localization.session import load_model, open_recognizer

    betas = _check_arguments(threshold_m, frame_stride, beta_sweep, filter_mode, odometry)
    queries_dir = Path(queries_dir)
    model = load_model(model_path, device, threads, warm_up=False)
    cfg = model.config(load_config(*config_paths))  # retrieval: defaults + --config; model: the checkpoint's
    filter_k = cfg.filter.hypothesis_count(image_only=odometry == "none") if filter_mode == "mcl" else 0
    k = max(max(ns), cfg.retrieval.top_k, filter_k) + (EXTRA_CANDIDATES_EXCLUDE if exclude_recent_s else 0)
    cfg = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, top_k=k))
    recognizer = open_recognizer(model, map_path, cfg)
    map_data = recognizer.map

    map_meta = dict(map_data.metadata or {})
    scorer = _Scorer(
        positions_of(np.asarray(map_data.poses)),
        heading_of(np.asarray(map_data.poses), forward_axis=0),
        _map_times(map_data, map_sequence, queries_dir, exclude_recent_s),
        threshold_m,
        tuple(ns),
        yaw_gate_deg,
        exclude_recent_s,
    )
    per: dict[str, dict] = {}
    records: dict[str, dict] = {}
    swept: dict[float, dict[str, Any]] = {b: {} for b in betas}
    timings: list[float] = []
    plan = []
    for seq_name, condition in query_sequences(queries_dir, sequences, map_meta):
        seq = open_sequence(queries_dir, seq_name)
        frames = _query_frames(seq, queries_dir, seq_name, frame_stride, max_queries)
        plan.append((seq_name, condition, seq, frames, np.stack([_query_pose(seq, i) for i in frames])))
    coverage = _check_coverage(map_data, map_sequence, queries_dir, plan, threshold_m, force)
    for seq_name, condition, seq, frames, q_T in plan:
        if exclude_recent_s is not None and map_sequence is None:
            _check_same_sequence(map_meta, seq_name)
        report = (
            (lambda done, total, s=seq_name, c=condition: progress(f"{s} ({c})", done, total)) if progress else None
        )
        ranking = rank_sequence(recognizer, seq, frames, k, betas, batch_size, report)
        timings += ranking.timings_ms
        q_times = np.asarray(seq.times, dtype=np.float64)[frames]
        result = scorer.score(ranking.ranked, q_T, q_times)
        key = condition if condition not in per else f"{condition}:{seq_name}"
        for b in betas:
            swept[b][key] = scorer.score(ranking.ranked_by_beta[b], q_T, q_times)
        per[key] = result.to_dict() | {"sequence": seq_name}
        records[key] = {"result": result, "query_xyz": positions_of(q_T), "frames": frames, "ranking": ranking}
        if filter_mode == "mcl":
            run = filter_sequence(map_data.poses, ranking.ranked, ranking.scores, q_T, q_times, cfg.filter, odometry)
            records[key]["filtered"] = run

    ns_sorted = tuple(sorted({int(n) for n in ns}))
    summary = _summary(model_path, map_path, queries_dir, map_data, cfg, records, per, timings, ns_sorted)
    summary |= {"threshold_m": threshold_m, "yaw_gate_deg": yaw_gate_deg, "exclude_recent_s": exclude_recent_s}
    summary["coverage"] = coverage
    if filter_mode == "mcl":
        figures = {c: filtered_figures([r["filtered"]], [r["query_xyz"]], threshold_m) for c, r in records.items()}
        summary["filtered"] = {"odometry": odometry, "per_condition": figures}
    if betas:
        summary["beta_sweep"] = _beta_sweep_rows(swept, ns_sorted)
    if out_dir is not None:
        write_outputs(Path(out_dir), summary, records, scorer.db_xyz, ns_sorted)
        summary["outputs"] = str(out_dir)
    return summary


def _check_arguments(threshold_m, frame_stride, beta_sweep, filter_mode, odometry) -> list[float]:
    if threshold_m <= 0:
        raise EvaluationError(f"--threshold must be > 0 m, got {threshold_m}")
    if frame_stride < 1:
        raise EvaluationError(f"--stride must be >= 1, got {frame_stride}")
    betas = [float(b) for b in beta_sweep]
    if any(not np.isfinite(b) or b < 0 for b in betas):
        raise EvaluationError(f"--sweep-beta values must be finite and >= 0, got {list(beta_sweep)}")
    check_modes(filter_mode, odometry)
    return betas


@dataclass
class _Scorer:
    """Recall@N of ranked map rows against query ground truth, with the evaluation's gates."""

    db_xyz: np.ndarray
    db_yaw: np.ndarray
    db_times: np.ndarray | None
    threshold_m: float
    ns: tuple[int, ...]
    yaw_gate_deg: float | None
    exclude_recent_s: float | None

    def score(self, order: np.ndarray, q_T: np.ndarray, q_times: np.ndarray):
        gated = self.yaw_gate_deg is not None
        recent = self.exclude_recent_s is not None
        return recall_at_n(
            order,
            q_T,
            self.db_xyz,
            self.threshold_m,
            self.ns,
            query_yaw=heading_of(q_T, 0) if gated else None,
            db_yaw=self.db_yaw if gated else None,
            yaw_gate_deg=self.yaw_gate_deg,
            query_times=q_times if recent else None,
            db_times=self.db_times,
            exclude_recent_s=self.exclude_recent_s,
        )


def _beta_sweep_rows(swept: dict[float, dict[str, Any]], ns_sorted: tuple[int, ...]) -> list[dict[str, Any]]:
    return [
        {
            "beta": b,
            "per_condition": {c: r.recall[1] for c, r in by_condition.items()},
            "overall": _pooled_recall(list(by_condition.values()), ns_sorted),
        }
        for b, by_condition in swept.items()
    ]


@dataclass
class SequenceRanking:
    """Every query frame's ranked map rows (best first, -1 padded) and their re-rank scores."""

    frames: list[int]
    ranked: np.ndarray  # (Q, k) map rows
    scores: np.ndarray  # (Q, k) alpha * cos + beta * psi, NaN where padded
    ranked_by_beta: dict[float, np.ndarray]  # the same candidates re-ranked with each swept beta
    timings_ms: list[float]  # per query, batched


def rank_sequence(
    recognizer: Any,
    seq: Any,
    frames: list[int],
    k: int,
    betas: Sequence[float] = (),
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> SequenceRanking:
    """Run the recognizer over ``frames`` of ``seq`` in batches (and re-rank with each beta)."""
    ranking = SequenceRanking(
        frames,
        np.full((len(frames), k), -1, dtype=np.int64),
        np.full((len(frames), k), np.nan),
        {b: np.full((len(frames), k), -1, dtype=np.int64) for b in betas},
        [],
    )
    for s in range(0, len(frames), batch_size):
        chunk = frames[s : s + batch_size]
        rgbs = [seq.load_image(i) for i in chunk]
        t0 = time.perf_counter()
        results = recognizer.recognize_batch(rgbs)
        ranking.timings_ms += [(time.perf_counter() - t0) * 1000.0 / len(chunk)] * len(chunk)
        for j, res in enumerate(results):
            hyps = res.hypotheses[:k]
            ranking.ranked[s + j, : len(hyps)] = [h.index for h in hyps]
            ranking.scores[s + j, : len(hyps)] = [h.score for h in hyps]
            for b in betas:
                rows = [h.index for h in recognizer.rank_again(res, beta=b)][:k]
                ranking.ranked_by_beta[b][s + j, : len(rows)] = rows
        if progress is not None:
            progress(s + len(chunk), len(frames))
    return ranking


def _query_frames(seq: Any, queries_dir: Path, seq_name: str, stride: int, max_queries: int) -> list[int]:
    """Frames with a valid pose, every ``stride``-th, at most ``max_queries`` spread evenly."""
    if not seq.has_images:
        raise EvaluationError(f"{queries_dir}/sequences/{seq_name}: no camera images to query with")
    frames = [i for i in range(0, seq.num_frames, stride) if bool(seq.pose_valid[i])]
    if max_queries and len(frames) > max_queries:
        frames = [frames[j] for j in np.linspace(0, len(frames) - 1, max_queries).round().astype(int)]
    if not frames:
        raise EvaluationError(f"{queries_dir}/sequences/{seq_name}: no frame with a valid pose to query")
    return frames


def _map_times(map_data: Any, map_sequence: str | None, queries_dir: Path, exclude_recent_s: float | None):
    """Times of the map's source frames (for --exclude-recent), else None."""
    from scmpr_ros.datasets import open_sequence

    if exclude_recent_s is None:
        return None
    meta = dict(map_data.metadata or {})
    mseq = map_sequence or meta.get("sequence")
    mroot = meta.get("dataset") or meta.get("dataset_root") or str(queries_dir)
    if not mseq:
        raise EvaluationError("--exclude-recent needs the map's sequence: pass --map-sequence NN")
    seq = open_sequence(Path(mroot) if Path(mroot).is_dir() else queries_dir, str(mseq))
    return np.asarray(seq.times, dtype=np.float64)[np.asarray(map_data.source_frames)]


def _check_coverage(map_data, map_sequence, queries_dir, plan, threshold_m: float, force: bool) -> dict:
    """Refuse a map of another place than the queries (mapping/coverage.py) unless ``force``."""
    from scmpr_ros.mapping.coverage import check_map_covers_queries, dataset_identity

    query_xyz = np.concatenate([positions_of(q_T) for *_, q_T in plan])
    meta = dict(map_data.metadata or {}) | ({"sequence": map_sequence} if map_sequence else {})
    identity = dataset_identity(queries_dir, [name for name, *_ in plan])
    return check_map_covers_queries(map_data.poses, query_xyz, meta, identity, max_gap_m=threshold_m, force=force)


def _check_same_sequence(map_meta: dict, seq_name: str) -> None:
    if str(map_meta.get("sequence", "")) not in ("", seq_name):
        raise EvaluationError(
            f"--exclude-recent compares times of one sequence, but the map is from sequence "
            f"{map_meta.get('sequence')} and the queries from {seq_name}; leave it out for cross-pass evaluation"
        )


def _summary(model_path, map_path, queries_dir, map_data, cfg, records, per, timings, ns_sorted) -> dict[str, Any]:
    """The JSON-ready figures: overall (pooled over conditions, each weighted by its queries) and per condition."""
    overall = _pooled_recall([r["result"] for r in records.values()], ns_sorted)
    latency = {"median": float(np.median(timings)), "p95": float(np.percentile(timings, 95))} if timings else {}
    return {
        "model": str(model_path),
        "map": str(map_path),
        "queries": str(queries_dir),
        "num_viewpoints": map_data.num_viewpoints,
        "alpha": cfg.retrieval.alpha,
        "beta": cfg.retrieval.beta,
        "overall": overall | {"num_evaluated": sum(r["result"].num_evaluated for r in records.values())},
        "per_condition": per,
        "latency_ms_per_query_batched": latency,
    }


def _pooled_recall(results: list, ns_sorted: tuple[int, ...]) -> dict[str, float]:
    """Recall@N over the queries of several results pooled (each weighted by its evaluated queries)."""
    correct = np.concatenate([r.correct for r in results])
    denom = max(sum(r.num_evaluated for r in results), 1)
    return {f"R@{n}": float(correct[:, i].sum()) / denom for i, n in enumerate(ns_sorted)}


def write_outputs(out: Path, summary: dict, records: dict, db_xyz: np.ndarray, ns: tuple[int, ...]) -> None:
    """results.json, recall_at_n.png (one curve per condition), trajectory_<condition>.png."""
    from scmpr_ros.evaluation.plots import plot_recall_curve, plot_trajectory

    out.mkdir(parents=True, exist_ok=True)
    curves = {name: (list(ns), [r["result"].recall[n] for n in ns]) for name, r in records.items()}
    files = {
        "json": str(out / "results.json"),
        "recall_curve": str(plot_recall_curve(curves, out / "recall_at_n.png", threshold_m=summary["threshold_m"])),
    }
    for name, r in records.items():
        res = r["result"]
        top1 = np.full((len(res.top1_ids), 3), np.nan)
        ok = res.top1_ids >= 0
        top1[ok] = db_xyz[res.top1_ids[ok]]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        path = plot_trajectory(
            db_xyz,
            r["query_xyz"],
            res.hits_at(1),
            out / f"trajectory_{safe}.png",
            title=f"{name}: R@1 {100 * res.recall[1]:.1f}% within {res.threshold_m:g} m",
            evaluated=res.evaluated,
            top1_xy=top1,
        )
        files[f"trajectory_{name}"] = str(path)
    summary["files"] = files
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))


def format_summary(summary: dict) -> str:
    """A plain-text table for the terminal."""
    ns = [k for k in summary["overall"] if k.startswith("R@")]
    lines = [f"{'condition':<14} {'queries':>7} " + " ".join(f"{n:>7}" for n in ns)]
    for name, r in summary["per_condition"].items():
        lines.append(f"{name:<14} {r['num_evaluated']:>7} " + " ".join(f"{100 * r['recall'][n]:>6.1f}%" for n in ns))
    o = summary["overall"]
    lines.append(f"{'all':<14} {o['num_evaluated']:>7} " + " ".join(f"{100 * o[n]:>6.1f}%" for n in ns))
    extra = f"threshold {summary['threshold_m']:g} m"
    if summary.get("yaw_gate_deg") is not None:
        extra += f", yaw gate {summary['yaw_gate_deg']:g} deg"
    if summary.get("exclude_recent_s") is not None:
        extra += f", exclude-recent {summary['exclude_recent_s']:g} s"
    lat = summary.get("latency_ms_per_query_batched") or {}
    if lat:
        extra += f"; {lat['median']:.1f} ms per query (batched, median)"
    lines.append(f"({summary['num_viewpoints']} map viewpoints, {extra})")
    sweep = summary.get("beta_sweep") or []
    if sweep:
        conds = list(sweep[0]["per_condition"])
        lines.append(
            f"R@1 by re-rank beta (alpha {summary['alpha']:g}): "
            + f"{'beta':>6} "
            + " ".join(f"{c:>8}" for c in conds)
            + f" {'all':>8}"
        )
        for row in sweep:
            lines.append(
                " " * 34
                + f"{row['beta']:>6g} "
                + " ".join(f"{100 * row['per_condition'][c]:>7.1f}%" for c in conds)
                + f" {100 * row['overall']['R@1']:>7.1f}%"
            )
    filtered = summary.get("filtered")
    if filtered:
        lines.append(f"filtered along the drive (MCL, odometry {filtered['odometry']}):")
        lines.append(f"{'condition':<14} {'R@1':>7} {'R@1>5':>7} {'conf.wrong':>10} {'frames to converge':>19}")
        for name, f in filtered["per_condition"].items():
            frames = f["frames_to_converge_median"]
            lines.append(
                f"{name:<14} {100 * f['R@1']:>6.1f}% {100 * f['R@1_after_5']:>6.1f}% "
                f"{100 * f['confident_wrong_rate']:>9.2f}% {'never' if frames is None else f'{frames:g}':>19}"
            )
    return "\n".join(lines)


def build_and_evaluate(
    model_path: Path,
    eval_root: Path,
    map_sequence: str,
    query_sequences: Sequence[str] | None,
    cfg: ScmprConfig,
    out: Path,
    device: str = "cpu",
    threshold_m: float = 5.0,
    exclude_recent_s: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Map of ``map_sequence`` with this model, then ``evaluate`` of the query sequences against it."""
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.localization.session import load_model
    from scmpr_ros.mapping.builder import build_map

    model = load_model(model_path, device, warm_up=False)
    map_path = out / f"map_{map_sequence}.scmpr-map"
    seq = open_sequence(eval_root, map_sequence)
    build = build_map(
        seq, model.network, cfg, map_path, model.checksum, progress=progress, metadata={"model_file": str(model_path)}
    )
    summary = evaluate(
        model_path,
        map_path,
        eval_root,
        query_sequences,
        threshold_m=threshold_m,
        exclude_recent_s=exclude_recent_s,
        map_sequence=map_sequence if exclude_recent_s else None,
        out_dir=out / "eval",
        device=device,
        progress=progress,
    )
    summary["map_build"] = {k: build[k] for k in ("viewpoints", "places", "viewpoints_per_s", "seconds_total")}
    return summary


def map_semantics_sources(items: Sequence[str] | None, configured: str) -> list[str]:
    """The ``--map-semantics`` sources to compare, in order: ``items`` checked (each an allowed value of
    ``lidar.segmentation``, none empty or repeated), or ``[configured]`` when ``items`` is None."""
    if items is None:
        return [configured]
    allowed = LIMITS[("lidar", "segmentation")]
    sources = [str(v).strip() for v in items]
    for v in sources:
        if v not in allowed:
            what = "an empty item" if not v else f"{v!r}"
            raise EvaluationError(
                f"--map-semantics {','.join(sources)!r}: {what} is not a map-semantics source; "
                f"give a comma-separated list of {', '.join(allowed)}"
            )
    if len(set(sources)) != len(sources):
        raise EvaluationError(
            f"--map-semantics {','.join(sources)!r} repeats a source; give each of {', '.join(allowed)} at most once"
        )
    return sources


def semantics_config(cfg: ScmprConfig, source: str, comparing: bool = False) -> ScmprConfig:
    """``cfg`` with ``lidar.segmentation = source``.  ``learned`` without ``lidar.segmenter_weights`` gets
    the shipped weights; when ``comparing`` sources, ``ground_truth`` drops the weights so that a sequence
    without labels fails instead of being segmented by the network under the ground-truth name."""
    from scmpr_ros.mapping.segmenters import default_segmenter_weights

    weights = cfg.lidar.segmenter_weights
    if source == "learned" and not weights:
        weights = str(default_segmenter_weights())
    elif source == "ground_truth" and comparing:
        weights = ""
    return dataclasses.replace(
        cfg, lidar=dataclasses.replace(cfg.lidar, segmentation=source, segmenter_weights=weights)
    )


def run_protocol(
    model_path: str | Path,
    data: str | Path,
    sequences: Sequence[str],
    out: str | Path,
    cfg: Any,
    *,
    threshold_m: float = 5.0,
    exclude_recent_s: float | None = None,
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    map_semantics: Sequence[str] | None = None,
) -> str:
    """KITTI-style protocol: per sequence, map and queries from that sequence; a markdown table of
    R@1/5/10 per sequence and their mean (``protocol.md`` / ``protocol.json`` in ``out``).

    ``map_semantics``: the ``lidar.segmentation`` sources to build the maps with (default: the config's
    own).  With several, each sequence gets one map per source (``out/seq_NN/<source>/``), queried with
    the same frames; the table has a row per (sequence, source), a mean row per source and each later
    source's mean R@1 difference against the first; ``protocol.json`` adds ``map_semantics``."""
    out = Path(out)
    sources = map_semantics_sources(map_semantics, cfg.lidar.segmentation)
    comparing = len(sources) > 1
    runs: dict[str, dict[str, dict]] = {source: {} for source in sources}
    for s in sequences:
        for source in sources:
            runs[source][s] = build_and_evaluate(
                Path(model_path),
                Path(data),
                s,
                [s],
                semantics_config(cfg, source, comparing),
                out / f"seq_{s}" / source if comparing else out / f"seq_{s}",
                device=device,
                threshold_m=threshold_m,
                exclude_recent_s=exclude_recent_s,
                progress=progress,
            )
    first = runs[sources[0]]
    ns = [k for k in next(iter(first.values()))["overall"] if k.startswith("R@")]
    means = {
        source: {n: sum(r["overall"][n] for r in rows.values()) / len(rows) for n in ns}
        for source, rows in runs.items()
    }
    title = f"Cross-modal place recognition, threshold {threshold_m:g} m" + (
        f", exclude-recent {exclude_recent_s:g} s" if exclude_recent_s else ""
    )
    table = _protocol_table(title, runs, means, ns)
    report: dict[str, Any] = {"sequences": first, "mean": means[sources[0]]}
    if comparing:
        report["map_semantics"] = {source: {"sequences": runs[source], "mean": means[source]} for source in sources}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "protocol.md", table + "\n")
    atomic_write_text(out / "protocol.json", json.dumps(report, indent=2, default=str))
    return table


def _protocol_table(title: str, runs: dict[str, dict[str, dict]], means: dict[str, dict], ns: list[str]) -> str:
    """The markdown of ``run_protocol``: a row per sequence (and map-semantics source when there are
    several), a mean row per source, then each later source's mean R@1 difference against the first."""
    comparing = len(runs) > 1
    labels = ["sequence", "map semantics"] if comparing else ["sequence"]
    header = [*labels, "queries", "viewpoints", *(f"{n} (%)" for n in ns)]
    lines = [f"### {title}", "", _markdown_row(header), "|" + "---|" * len(header)]
    for s in next(iter(runs.values())):
        for source, rows in runs.items():
            r = rows[s]
            figures = [
                r["overall"]["num_evaluated"],
                r["num_viewpoints"],
                *(f"{100 * r['overall'][n]:.2f}" for n in ns),
            ]
            lines.append(_markdown_row([s, source][: len(labels)] + figures))
    for source, mean in means.items():
        lines.append(_markdown_row(["mean", source][: len(labels)] + ["", "", *(f"{100 * mean[n]:.2f}" for n in ns)]))
    first, *others = means
    if others:
        lines.append("")
    for source in others:
        delta = 100 * (means[source]["R@1"] - means[first]["R@1"])
        lines.append(f"{source} vs {first}: R@1 {delta:+.2f} points (mean over sequences)")
    return "\n".join(lines)


def _markdown_row(cells: Sequence[Any]) -> str:
    """``| a | b |``; an empty cell as ``| |``."""
    return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)
