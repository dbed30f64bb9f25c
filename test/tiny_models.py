"""The smallest model the training tests use: 32x64 images, 32-d features and descriptors, 4 clusters."""

from __future__ import annotations

import dataclasses

from scmpr_ros.config import ModelConfig

TINY_IMAGE_HW = (32, 64)


def tiny_model_config(model: ModelConfig) -> ModelConfig:
    """``model`` shrunk so that a few CPU training steps take a second or two."""
    return dataclasses.replace(
        model,
        image_height=TINY_IMAGE_HW[0],
        image_width=TINY_IMAGE_HW[1],
        feature_dim=32,
        netvlad_clusters=4,
        descriptor_dim=32,
        lidar_dims=[8, 16, 32],
        attention_dim=16,
    )
