"""scmpr_ros.model: the SCM-PR encoders in plain torch (no ROS).

model = SCMPRModel(cfg.model, lidar_in_channels=RANGE_CHANNELS)
enc = model.encode_image(preprocess_images([rgb], cfg.model), prototypes)
lid = model.encode_lidar(range_input, labels)
"""

from scmpr_ros.model.checkpoint import load_checkpoint, model_checksum, save_checkpoint
from scmpr_ros.model.preprocess import preprocess_images
from scmpr_ros.model.scmpr import ImageEncoding, LidarEncoding, SCMPRModel

__all__ = [
    "ImageEncoding",
    "LidarEncoding",
    "SCMPRModel",
    "load_checkpoint",
    "model_checksum",
    "preprocess_images",
    "save_checkpoint",
]
