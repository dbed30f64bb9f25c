"""Write the synthetic town in the KITTI odometry layout, plus ``synth_manifest.yaml``.

Sequences: 00 = mapping pass (day); 01/02/03 = query pass in day/night/winter (only those asked
for).  The query sequences share geometry and poses: their velodyne/labels files are hard links
to one copy (plain copies where the file system refuses links).  poses.txt holds camera-0 poses
``Tr T_map_velo Tr^-1`` so that the KITTI loader returns ``T_map_velo`` with map = the LiDAR frame
of the first mapping frame.  Every file is written atomically; the manifest is written last; it records
the LiDAR sensor model (``lidar``: hdl64e | uniform; a manifest without the key predates the choice: uniform).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import yaml

from scmpr_ros.datasets.kitti import format_calib, format_poses, format_times
from scmpr_ros.datasets.synthetic.lidar_model import LIDAR_MODELS
from scmpr_ros.datasets.synthetic.render import CONDITIONS
from scmpr_ros.datasets.synthetic.town import KITTI_IMAGE_SIZE, SyntheticTown
from scmpr_ros.errors import DatasetError
from scmpr_ros.geometry import invert_pose
from scmpr_ros.io_utils import atomic_write_bytes, atomic_write_text

MANIFEST = "synth_manifest.yaml"
FORMAT = "scmpr-synthetic-town/1"
QUERY_SEQUENCE = {"day": "01", "night": "02", "winter": "03"}
ProgressFn = Callable[[int, int, str], None]


def parse_conditions(conditions: str | Iterable[str]) -> list[str]:
    items = (
        [c.strip() for c in conditions.split(",")]
        if isinstance(conditions, str)
        else [str(c).strip() for c in conditions]
    )
    items = [c for c in items if c]
    bad = [c for c in items if c not in CONDITIONS]
    if bad or not items:
        raise DatasetError(
            f"unknown condition(s) {', '.join(bad) or '(none given)'}; expected a comma list of {', '.join(CONDITIONS)}"
        )
    return [c for c in CONDITIONS if c in items]  # canonical order, no duplicates


def _png(img: np.ndarray) -> bytes:
    import cv2

    arr = img[:, :, ::-1] if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DatasetError("PNG encoding failed")
    return buf.tobytes()


def _write_png(paths: Path | list[Path], img: np.ndarray) -> None:
    data = _png(img)
    for path in paths if isinstance(paths, list) else [paths]:
        atomic_write_bytes(path, data)


def _write_scan(home: Path, others: list[Path], stem: str, pts: np.ndarray, labels: np.ndarray) -> None:
    atomic_write_bytes(home / "velodyne" / f"{stem}.bin", pts.astype("<f4").tobytes())
    atomic_write_bytes(home / "labels" / f"{stem}.label", labels.astype("<u4").tobytes())
    for d in others:
        _link_or_copy(home / "velodyne" / f"{stem}.bin", d / "velodyne" / f"{stem}.bin")
        _link_or_copy(home / "labels" / f"{stem}.label", d / "labels" / f"{stem}.label")


class _BackgroundWriter:
    """Encodes and writes files on one worker thread (cv2 and file I/O release the GIL) while the
    next frame is ray-cast; at most ``depth`` jobs wait, and the first error is re-raised."""

    def __init__(self, depth: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer")
        self.pending: deque = deque()
        self.depth = depth

    def submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.abort()

    def abort(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        atomic_write_bytes(dst, src.read_bytes())


def generate_town(
    out_dir: str | Path,
    seed: int = 0,
    frames: int = 200,
    conditions: str | Iterable[str] = ("day", "night", "winter"),
    image_size: tuple[int, int] = KITTI_IMAGE_SIZE,
    azimuth_steps: int = 2000,
    class_images: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    town: SyntheticTown | None = None,
    lidar: str = "hdl64e",
) -> dict:
    """Generate and write a town; returns the manifest dict (also in ``out_dir/synth_manifest.yaml``).

    ``frames`` is the length of the mapping pass; the query pass has a similar length.
    ``class_images`` also writes ``semantic_2/NNNNNN.png`` (common class id per pixel, 255 = none).
    ``lidar`` is the LiDAR sensor model (hdl64e | uniform; ignored when ``town`` is given).
    """
    out = Path(out_dir)
    conds = parse_conditions(conditions)
    if town is None and lidar not in LIDAR_MODELS:
        raise DatasetError(f"unknown LiDAR model {lidar!r}; expected one of {', '.join(LIDAR_MODELS)}")
    seqs = {"00": ("map", "day")} | {QUERY_SEQUENCE[c]: ("query", c) for c in conds}
    _prepare(out, seqs, overwrite)
    t_start = time.perf_counter()
    if town is None:
        town = SyntheticTown(seed=seed, frames=frames, image_size=image_size, azimuth_steps=azimuth_steps, lidar=lidar)
    calib = town.calib
    Tr_inv = invert_pose(calib.Tr)
    n_map, n_query = len(town.map_pass), len(town.query_pass)
    total = n_map + n_query
    done = 0
    if progress:
        progress(0, total, "map pass")

    writer = _BackgroundWriter()
    try:
        query_dirs = {c: out / "sequences" / QUERY_SEQUENCE[c] for c in conds}
        scan_home = query_dirs[conds[0]]
        for name, seq_dirs in (("map", {"day": out / "sequences" / "00"}), ("query", query_dirs)):
            drive = town.drive(name)
            T_map_velo = town.poses_map(name)
            for d in seq_dirs.values():
                for sub in ("image_2", "velodyne", "labels") + (("semantic_2",) if class_images else ()):
                    (d / sub).mkdir(parents=True, exist_ok=True)
                atomic_write_text(d / "calib.txt", format_calib(calib.P, calib.Tr))
                atomic_write_text(d / "poses.txt", format_poses(calib.Tr @ T_map_velo @ Tr_inv))
                atomic_write_text(d / "times.txt", format_times(drive.times))
            home = seq_dirs["day"] if name == "map" else scan_home
            for i in range(len(drive)):
                stem = f"{i:06d}"
                hits = town.cast_camera(name, i)
                for cond, d in seq_dirs.items():
                    writer.submit(_write_png, d / "image_2" / f"{stem}.png", town.render_image(name, i, cond, hits))
                if class_images:
                    writer.submit(
                        _write_png,
                        [d / "semantic_2" / f"{stem}.png" for d in seq_dirs.values()],
                        town.class_image(name, i, hits),
                    )
                pts, labels = town.scan(name, i)
                writer.submit(_write_scan, home, [d for d in seq_dirs.values() if d != home], stem, pts, labels)
                done += 1
                if progress:
                    progress(done, total, f"{name} pass")
    except BaseException:
        writer.abort()
        raise
    writer.close()

    elapsed = time.perf_counter() - t_start
    manifest = {
        "format": FORMAT,
        "seed": int(town.seed),
        "frames": int(town.frames),
        "conditions": conds,
        "image_size": [int(v) for v in town.image_size],
        "azimuth_steps": int(town.azimuth_steps),
        "lidar": town.lidar.name,
        "class_images": bool(class_images),
        "world_frame": "map = LiDAR frame of sequence 00 frame 0 (z up); ground at z = -1.73",
        "T_town_map": invert_pose(town.T_map_town).round(9).tolist(),
        "generation_s": round(elapsed, 2),
        "frames_per_s": round(total / max(elapsed, 1e-9), 2),
        "sequences": {
            key: {
                "pass": p,
                "condition": c,
                "frames": int(len(town.drive(p))),
                "scans_in": "00" if p == "map" else QUERY_SEQUENCE[conds[0]],
                "reversed_frames": int(town.drive(p).reverse.sum()),
            }
            for key, (p, c) in sorted(seqs.items())
        },
    }
    atomic_write_text(out / MANIFEST, yaml.safe_dump(manifest, sort_keys=False))
    return manifest


def _prepare(out: Path, seqs: dict, overwrite: bool) -> None:
    existing = out / MANIFEST
    ours = set(seqs)
    if existing.exists() or any((out / "sequences" / s).exists() for s in ours):
        if not overwrite:
            raise DatasetError(
                f"{out}: already holds a synthetic town (or sequences {', '.join(sorted(ours))}); "
                "pass --overwrite to replace it or choose another output directory"
            )
        old = set()
        if existing.exists():
            try:
                old = set((yaml.safe_load(existing.read_text()) or {}).get("sequences", {}) or {})
            except yaml.YAMLError:
                old = set()
            existing.unlink()
        for s in sorted(ours | {str(s) for s in old}):
            target = out / "sequences" / s
            if target.is_dir():
                shutil.rmtree(target)
    (out / "sequences").mkdir(parents=True, exist_ok=True)


def read_manifest(root: str | Path) -> dict:
    """The manifest of a generated town, validated; DatasetError if missing or inconsistent."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path}: not found; expected the manifest written by `scmpr synth {root}` "
            "(an interrupted generation leaves none: run it again with --overwrite)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'seed' and 'sequences'")
    for key in ("seed", "sequences"):
        if key not in data:
            raise DatasetError(
                f"{path}: no '{key}' key; expected 'seed: <int>' and 'sequences: {{NN: {{pass, condition}}}}'"
            )
    seqs = data["sequences"]
    if not isinstance(seqs, dict) or not seqs:
        raise DatasetError(f"{path}: 'sequences' must map sequence names to {{pass, condition}}")
    for name, entry in seqs.items():
        if (
            not isinstance(entry, dict)
            or entry.get("pass") not in ("map", "query")
            or entry.get("condition") not in CONDITIONS
        ):
            raise DatasetError(
                f"{path}: sequence {name!r} entry {entry!r} is invalid; expected pass: map|query and "
                f"condition: {'|'.join(CONDITIONS)}"
            )
        if not (root / "sequences" / str(name)).is_dir():
            raise DatasetError(f"{path}: lists sequence {name} but {root / 'sequences' / str(name)} does not exist")
    data.setdefault("lidar", "uniform")  # towns written before the sensor model was recorded
    if data["lidar"] not in LIDAR_MODELS:
        raise DatasetError(f"{path}: unknown lidar {data['lidar']!r}; expected one of {', '.join(LIDAR_MODELS)}")
    return data
