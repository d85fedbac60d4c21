"""Image preprocessing and the image-side modules shared by the encoders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmrecall.encoders.backbones import Backbone, build_backbone
from mmrecall.encoders.config import ImageConfig
from mmrecall.encoders.onnx_runtime import LazyOnnxRuntime

RUNTIMES = ("torch", "onnxruntime")


def image_to_array(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
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
    mean_arr, std_arr = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((array - mean_arr) / std_arr).transpose(2, 0, 1)  # (3, size, size)


class ImageStack:
    """A backbone with its preprocessing: PIL images in, pooled features out."""

    def __init__(self, config: ImageConfig, checkpoint: str | None = None) -> None:
        if config.runtime not in RUNTIMES:
            raise ValueError(f"unknown image runtime {config.runtime!r} (known: {', '.join(RUNTIMES)})")
        self.backbone: Backbone = build_backbone(config.backbone, checkpoint or config.checkpoint)
        self.backbone.module.eval()
        self.size = self.backbone.image_size or config.image_size
        self.dim = self.backbone.dim
        self.onnx = LazyOnnxRuntime(self.backbone.module, self.size) if config.runtime == "onnxruntime" else None

    def to_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [image_to_array(img, self.size, self.backbone.mean, self.backbone.std) for img in images]
        if not arrays:
            return torch.zeros((0, 3, self.size, self.size))
        return torch.from_numpy(np.stack(arrays))  # (m, 3, s, s)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[0] == 0:
            return torch.zeros((0, self.dim))
        if self.onnx is not None and not torch.is_grad_enabled():  # a backbone being trained stays in torch
            return self.onnx(pixels)  # (m, dim)
        return self.backbone.module(pixels.contiguous(memory_format=torch.channels_last))  # (m, dim)
