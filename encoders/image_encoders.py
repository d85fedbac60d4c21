"""Image-only encoders over the cover: pooled backbone features ("image"), or the first FC layer of a
tag classifier trained on top of the backbone ("tag-image"). An item without a cover gets a zero row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmrecall.encoders.base import ContentInput, Encoder, l2_normalize, weights_digest
from mmrecall.encoders.config import EncoderConfig, TagHeadConfig
from mmrecall.encoders.image import ImageStack
from mmrecall.encoders.registry import register_kind


class TagHead(nn.Module):
    """Two FC layers over pooled features; the first one's output is the image vector."""

    def __init__(self, in_dim: int, config: TagHeadConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, config.vector_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.vector_dim, max(1, len(config.tags)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector = self.fc1(features)  # (n, vector_dim)
        logits = self.fc2(self.dropout(torch.relu(vector)))  # (n, n_tags)
        return vector, logits


@register_kind("image", "tag-image")
class ImageEncoder(Encoder):
    def __init__(
        self,
        config: EncoderConfig,
        *,
        image_checkpoint: str | Path | None = None,
        weights: str | Path | None = None,
        **_unused,
    ) -> None:
        if config.image is None:
            raise ValueError(f"encoder {config.name!r} of kind {config.kind!r} needs an image section")
        super().__init__(config, weights_digest=weights_digest(image_checkpoint, weights))
        torch.manual_seed(config.seed)
        self.image = ImageStack(config.image, None if weights else image_checkpoint)
        self.net = nn.ModuleDict({"backbone": self.image.backbone.module})
        self.head: TagHead | None = None
        if config.kind == "tag-image":
            self.head = TagHead(self.image.dim, config.tag_head or TagHeadConfig())
            self.net["head"] = self.head
        if weights:
            self.load_weights(weights)
        self.net.eval()

    @property
    def dim(self) -> int:
        return self.head.fc1.out_features if self.head is not None else self.image.dim

    def preprocess(self, items: Sequence[ContentInput]) -> dict[str, torch.Tensor]:
        return {
            "has_image": torch.tensor([item.image is not None for item in items], dtype=torch.bool),  # (n,)
            "images": self.image.to_tensor([item.image for item in items if item.image is not None]),  # (m, 3, s, s)
        }

    def image_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.image.features(pixels)  # (m, f)
        return self.head(features)[0] if self.head is not None else features

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros((batch["has_image"].shape[0], self.dim))  # (n, d): zero rows for items without a cover
        if batch["images"].shape[0]:
            out[batch["has_image"]] = l2_normalize(self.image_vectors(batch["images"]))
        return out
