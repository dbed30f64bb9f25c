"""The synthetic town: procedural streets ray-cast into KITTI-format camera images and LiDAR scans.

    from scmpr_ros.datasets.synthetic import generate_town, read_manifest, SyntheticTown
    manifest = generate_town("data/town", seed=3, frames=200, conditions="day,night,winter")
    town = SyntheticTown(seed=3, frames=20, image_size=(320, 96), azimuth_steps=512)  # in memory

Output is read back by the KITTI loader (``scmpr_ros.datasets.open_sequence``).
"""

from __future__ import annotations

from scmpr_ros.datasets.synthetic.render import CONDITIONS
from scmpr_ros.datasets.synthetic.town import KITTI_IMAGE_SIZE, SyntheticTown, kitti_calib
from scmpr_ros.datasets.synthetic.writer import MANIFEST, QUERY_SEQUENCE, generate_town, parse_conditions, read_manifest

__all__ = [
    "CONDITIONS",
    "KITTI_IMAGE_SIZE",
    "MANIFEST",
    "QUERY_SEQUENCE",
    "SyntheticTown",
    "generate_town",
    "kitti_calib",
    "parse_conditions",
    "read_manifest",
]
