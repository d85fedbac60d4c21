"""Image backbones (torchvision ResNets) and their preprocessing; local checkpoints load for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

from encoders.config import ImageConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def build_resnet(arch: str) -> tuple[nn.Module, int]:
    """A ResNet without its classifier: pooled features (n, feature_dim)."""
    if arch == "resnet-tiny":
        model: ResNet = ResNet(BasicBlock, [1, 1, 1, 1])
    elif arch.startswith("resnet") and hasattr(models, arch):
        model = getattr(models, arch)(weights=None)
    else:
        raise ValueError(f"unknown image arch {arch!r} (torchvision resnet* or resnet-tiny)")
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, feature_dim


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file; unwraps {"state_dict": ...} and DataParallel's `module.`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_backbone_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load backbone weights; a classifier head in the file (fc.*) is ignored, anything else must match."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: checkpoint does not fit the backbone "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def image_to_array(
    image: Image.Image, size: int, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD
) -> np.ndarray:
    """Resize the short side to `size`, center-crop a square, normalize: float32 (3, size, size)."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BILINEAR
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    array = np.asarray(crop, dtype=np.float32) / 255.0  # (size, size, 3)
    return ((array - mean) / std).transpose(2, 0, 1)  # (3, size, size)


def build_image_model(config: ImageConfig, checkpoint: str | Path | None = None) -> tuple[nn.Module, int]:
    model, dim = build_resnet(config.arch)
    path = checkpoint or config.checkpoint
    if path:
        load_backbone_checkpoint(model, path)
    return model, dim
