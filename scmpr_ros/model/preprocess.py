"""Camera image -> encoder input: resize the whole frame to (image_height, image_width) (no crop, so
the field of view matches the LiDAR crop), RGB float in [0, 1], normalised with ImageNet mean/std."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scmpr_ros.config import ModelConfig
from scmpr_ros.errors import InputError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess_images(images: Sequence[np.ndarray] | np.ndarray, cfg: ModelConfig) -> torch.Tensor:
    """List of RGB uint8 (H, W, 3) images (any sizes) -> float32 (B, 3, image_height, image_width)."""
    import cv2

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if len(images) == 0:
        raise InputError("preprocess_images: no images given")
    h, w = int(cfg.image_height), int(cfg.image_width)
    if h < 32 or w < 32:
        raise InputError(f"model.image_height/width must be >= 32, got {h}x{w}")
    out = np.empty((len(images), h, w, 3), dtype=np.float32)
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"preprocess_images: image {i} must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        if img.shape[0] < 2 or img.shape[1] < 2:
            raise InputError(f"preprocess_images: image {i} is too small: {img.shape}")
        if img.shape[:2] != (h, w):
            shrink = img.shape[0] > h and img.shape[1] > w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = img
    out = (out / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
