"""The smallest model the training tests use (32x64 images, 32-d features and descriptors, 4 clusters) and
the config that trains it in a few CPU seconds."""

from __future__ import annotations

import dataclasses

from scmpr_ros.config import ModelConfig, ScmprConfig

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


#: training settings every tiny run shares: small batches, one thread, no k-means warm-up, all queries
TINY_TRAINING = {
    "batch_size": 4,
    "lr": 2e-3,
    "threads": 1,
    "kmeans_batches": 1,
    "log_every": 1,
    "val_max_queries": 0,
}


def tiny_config(**training) -> ScmprConfig:
    """The default config with the tiny model and TINY_TRAINING, then ``training`` (the test's own keys)."""
    cfg = ScmprConfig()
    return dataclasses.replace(
        cfg,
        model=tiny_model_config(cfg.model),
        training=dataclasses.replace(cfg.training, **(TINY_TRAINING | training)),
    )
