"""``scmpr ablation``: the paper's Table 3 ladder at small scale, trained and evaluated end to end.

Variants (each trained with the same seed, data, steps and schedule, from scratch or warm-started
from a trained model's tensors that fit the variant (``init``)):
no semantics (VMamba + NetVLAD, plain LiDAR encoder) -> + SAFF -> + SAFF + CSA -> + SAFF + CSA + L_sem.
Each model builds its own map of the evaluation town's mapping pass and is scored with
``scmpr evaluate`` (R@1 at 5 m, per condition), so the whole pipeline, re-rank included, is measured.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from scmpr_ros.config import ScmprConfig
from scmpr_ros.errors import ScmprError
from scmpr_ros.io_utils import atomic_write_text

VARIANTS: tuple[tuple[str, dict[str, bool]], ...] = (
    ("Ours (w/o Semantics)", {"use_semantics": False, "use_saff": False, "use_csa": False, "use_lsem": False}),
    ("+ SAFF Module", {"use_semantics": True, "use_saff": True, "use_csa": False, "use_lsem": False}),
    ("+ SAFF Module + CSA", {"use_semantics": True, "use_saff": True, "use_csa": True, "use_lsem": False}),
    (
        "+ SAFF Module + CSA + SC Loss (Full SCM-PR)",
        {"use_semantics": True, "use_saff": True, "use_csa": True, "use_lsem": True},
    ),
)
PAPER_KITTI_R1 = (57.35, 59.81, 61.05, 62.58)  # SCM-PR paper, Table 3 (KITTI, R@1 %)
EVAL_TOWN_SEED = 4242  # the generated evaluation town when none is given (no training seed is this)


class AblationError(ScmprError):
    pass


def map_pass_of(root: Path) -> str:
    """The mapping-pass sequence of a synthetic town (its manifest), else "00"."""
    if (root / "synth_manifest.yaml").is_file():
        from scmpr_ros.datasets.synthetic import read_manifest

        for name, entry in read_manifest(root)["sequences"].items():
            if entry.get("pass") == "map":
                return str(name)
    return "00"


def ensure_eval_town(out: Path, eval_data: Path | None, frames: int, image_size: tuple[int, int] = (620, 188)) -> Path:
    if eval_data is not None:
        if not Path(eval_data).is_dir():
            raise AblationError(f"--eval-data {eval_data}: not a directory")
        return Path(eval_data)
    from scmpr_ros.datasets.synthetic import generate_town

    town = out / f"eval_town_{EVAL_TOWN_SEED}"
    if not (town / "synth_manifest.yaml").is_file():
        generate_town(town, seed=EVAL_TOWN_SEED, frames=frames, image_size=image_size, overwrite=True)
    return town


def markdown_table(rows: list[dict], conditions: Sequence[str], title: str) -> str:
    head = (
        "| Configuration | "
        + " | ".join(f"R@1 {c} (%)" for c in conditions)
        + " | R@1 all (%) | R@5 all (%) | paper KITTI R@1 (%) |"
    )
    sep = "|" + "---|" * (len(conditions) + 4)
    lines = [f"### {title}", "", head, sep]
    for r in rows:
        cells = [f"{100 * r['per_condition'].get(c, float('nan')):.1f}" for c in conditions]
        lines.append(
            f"| {r['name']} | "
            + " | ".join(cells)
            + f" | {100 * r['r1']:.1f} | {100 * r['r5']:.1f} | {r['paper']:.2f} |"
        )
    return "\n".join(lines)


ROW_FILE = "ablation_row.json"


def variant_key(vcfg: ScmprConfig, data: Path, eval_root: Path, map_seq: str, steps: int | None, init) -> str:
    """What a finished variant's row depends on: its model + training config, data, evaluation town, steps, init."""
    import hashlib

    blob = json.dumps(
        {
            "model": dataclasses.asdict(vcfg.model),
            "training": dataclasses.asdict(vcfg.training),
            "map": dataclasses.asdict(vcfg.map),
            "retrieval": dataclasses.asdict(vcfg.retrieval),
            "data": str(Path(data).resolve()),
            "eval": str(Path(eval_root).resolve()),
            "map_seq": map_seq,
            "steps": steps,
            "init": str(Path(init).resolve()) if init else None,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_finished_row(run_dir: Path, key: str) -> dict | None:
    """The saved row of a variant finished with the same settings (``key``), else None (re-run it)."""
    path = run_dir / ROW_FILE
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and row.get("key") == key else None


def run_ablation(
    cfg: ScmprConfig,
    data: str | Path,
    out: str | Path,
    *,
    eval_data: str | Path | None = None,
    eval_map_sequence: str | None = None,
    eval_query_sequences: Sequence[str] | None = None,
    steps: int | None = None,
    device: str = "auto",
    eval_frames: int = 200,
    variants: Sequence[int] = (0, 1, 2, 3),
    progress: bool = True,
    init: str | Path | None = None,
) -> str:
    """Train + evaluate each variant; writes ``ablation.md`` / ``ablation.json`` in ``out``; returns the table."""
    from scmpr_ros.evaluation.evaluate import build_and_evaluate
    from scmpr_ros.training.pairs import load_or_build_cache
    from scmpr_ros.training.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eval_root = ensure_eval_town(out, Path(eval_data) if eval_data else None, eval_frames)
    map_seq = eval_map_sequence or map_pass_of(eval_root)
    queries = (
        list(eval_query_sequences)
        if eval_query_sequences
        else ([map_seq] if not (eval_root / "synth_manifest.yaml").is_file() else None)
    )
    data = Path(data)
    prebuilt = data.suffix == ".npz" or (
        data.is_dir() and any(data.glob("*.npz")) and not (data / "sequences").is_dir()
    )
    cache_path = data if prebuilt else out / "pairs.npz"  # datasets: build the pairs once for all variants
    if not prebuilt:
        load_or_build_cache(data, cfg, cache_path, cfg.training.sequences or None, cfg.training.frame_stride)
    rows = []
    eval_device = "cpu" if device in ("auto", "cpu") else device
    for v in variants:
        name, flags = VARIANTS[v]
        vcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **flags))
        run_dir = out / f"variant{v}"
        key = variant_key(vcfg, cache_path, eval_root, map_seq, steps, init)
        done = load_finished_row(run_dir, key)
        if done is not None:  # an interrupted ablation: this variant finished with the same settings
            rows.append(done)
            continue
        t0 = time.time()
        res = train(vcfg, cache_path, run_dir, device=device, max_steps=steps, progress=progress, init_checkpoint=init)
        train_s = time.time() - t0
        model_path = res.model_path
        summary = build_and_evaluate(
            model_path, eval_root, map_seq, queries, vcfg, run_dir, device=eval_device, exclude_recent_s=None
        )
        rows.append(
            {
                "name": name,
                "flags": flags,
                "paper": PAPER_KITTI_R1[v],
                "steps": res.steps,
                "train_s": train_s,
                "model": str(model_path),
                "r1": summary["overall"]["R@1"],
                "r5": summary["overall"]["R@5"],
                "per_condition": {c: r["recall"]["R@1"] for c, r in summary["per_condition"].items()},
                "summary": summary["per_condition"],
                "key": key,
            }
        )
        atomic_write_text(run_dir / ROW_FILE, json.dumps(rows[-1], indent=2, default=str))
    conditions = list(dict.fromkeys(c for r in rows for c in r["per_condition"]))
    steps_txt = f"{rows[0]['steps']} steps" if rows else ""
    start = f", warm start from {init}" if init else ", from scratch"
    table = markdown_table(
        rows,
        conditions,
        f"Ablation (evaluation town {EVAL_TOWN_SEED if eval_data is None else eval_root.name}, "
        f"{steps_txt} per variant{start}, R@1 at 5 m, re-rank "
        f"α {cfg.retrieval.alpha:g} β {cfg.retrieval.beta:g})",
    )
    atomic_write_text(out / "ablation.md", table + "\n")
    atomic_write_text(
        out / "ablation.json",
        json.dumps({"rows": rows, "eval_data": str(eval_root), "map_sequence": map_seq}, indent=2, default=str),
    )
    return table
