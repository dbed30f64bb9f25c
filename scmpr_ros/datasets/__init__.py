"""Dataset loaders (no torch): KITTI odometry / SemanticKITTI, KITTI-360, and the synthetic town.

``open_sequence(root, sequence, kind="auto")`` is the one entry point; the synthetic town is
written in the KITTI layout and read by the KITTI loader.
"""

from __future__ import annotations

from pathlib import Path

from scmpr_ros.datasets.base import Calibration, Sequence
from scmpr_ros.errors import DatasetError

KINDS = ("auto", "kitti", "kitti360")


def detect_kind(root: str | Path) -> str:
    """'kitti360' when root has data_3d_raw/ or data_2d_raw/, 'kitti' when it holds KITTI sequences."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory not found")
    if (root / "data_3d_raw").is_dir() or (root / "data_2d_raw").is_dir():
        return "kitti360"
    if (root / "sequences").is_dir() or any((p / "velodyne").is_dir() for p in root.iterdir() if p.is_dir()):
        return "kitti"
    raise DatasetError(
        f"{root}: not a KITTI or KITTI-360 dataset; expected sequences/NN/velodyne/ (KITTI, SemanticKITTI, "
        "synthetic town) or data_3d_raw/<drive>/ (KITTI-360)"
    )


def open_sequence(root: str | Path, sequence: str | int, kind: str = "auto") -> Sequence:
    """Open one sequence of a dataset; raises DatasetError with what is missing or inconsistent."""
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    root = Path(root)
    if kind == "auto":
        kind = detect_kind(root)
    if kind == "kitti":
        from scmpr_ros.datasets.kitti import KittiSequence

        return KittiSequence(root, sequence)
    from scmpr_ros.datasets.kitti360 import Kitti360Sequence

    return Kitti360Sequence(root, sequence)


def list_sequences(root: str | Path, kind: str = "auto") -> list[str]:
    root = Path(root)
    kind = detect_kind(root) if kind == "auto" else kind
    if kind == "kitti":
        from scmpr_ros.datasets.kitti import list_sequences as kitti_list

        return kitti_list(root)
    from scmpr_ros.datasets.kitti360 import list_sequences as k360_list

    return k360_list(root)


__all__ = ["Calibration", "Sequence", "open_sequence", "list_sequences", "detect_kind", "KINDS"]
