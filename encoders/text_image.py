"""The first content encoder: title + tags through a text model, cover through a ResNet, fused.

fused = normalize([w_t * text_vec, w_i * image_vec]); an item without a cover has zeros in the image part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from mmrecall.encoders.base import ContentInput, Encoder, l2_normalize, weights_digest
from mmrecall.encoders.config import EncoderConfig
from mmrecall.encoders.image import ImageStack
from mmrecall.encoders.registry import register_kind
from mmrecall.encoders.text import build_text_model, length_groups, load_tokenizer, mean_pool, quantized_int8


@register_kind("text-image")
class TextImageEncoder(Encoder):
    def __init__(
        self,
        config: EncoderConfig,
        *,
        image_checkpoint: str | Path | None = None,
        text_model_dir: str | Path | None = None,
        weights: str | Path | None = None,
    ) -> None:
        image_checkpoint = image_checkpoint or (config.image.checkpoint if config.image else None)
        super().__init__(config, weights_digest=weights_digest(image_checkpoint, text_model_dir, weights))
        torch.manual_seed(config.seed)  # random-init parts must be identical in every worker process
        model_dir = Path(text_model_dir) if text_model_dir else None
        self.tokenizer = load_tokenizer(model_dir if config.text.kind == "minilm" else None)
        self.tokenizer.padding_side = "right"  # length groups trim each group's padded tail
        self.text_model = build_text_model(config.text, model_dir).eval()
        self.text_dim = int(self.text_model.config.hidden_size)
        self.image: ImageStack | None = None
        self.image_dim = 0
        self.net = torch.nn.ModuleDict({"text": self.text_model})
        if config.image is not None:
            self.image = ImageStack(config.image, image_checkpoint)
            self.image_model, self.image_dim = self.image.backbone.module, self.image.dim
            self.net["image"] = self.image_model
        # Split the unit norm between the parts: sqrt keeps w_t^2 + w_i^2 proportions as given.
        if weights:
            self.load_weights(weights)
        # what forward runs: the float model, or its int8 copy (self.net keeps the float weights for `save`)
        self.text_runner = self.text_model
        if config.text.int8:
            self.text_runner = quantized_int8(self.text_model, self.tokenizer, config.text.max_length)
        total = config.text_weight + (config.image_weight if self.image is not None else 0.0)
        self.text_scale = math.sqrt(config.text_weight / total)
        self.image_scale = math.sqrt(config.image_weight / total) if self.image is not None else 0.0

    @property
    def dim(self) -> int:
        return self.text_dim + self.image_dim

    def preprocess(self, items: Sequence[ContentInput]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            [item.text() for item in items],
            padding=True,
            truncation=True,
            max_length=self.config.text.max_length,
            return_tensors="pt",
        )
        batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        if self.image is not None:
            batch["has_image"] = torch.tensor([item.image is not None for item in items], dtype=torch.bool)  # (n,)
            batch["images"] = self.image.to_tensor([item.image for item in items if item.image is not None])
            # (m, 3, s, s), m = items with a cover
        return batch

    def text_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, h) mean-pooled token states, by length groups (config.text.bucket_rows) or in one batch."""
        pooled = torch.empty((input_ids.shape[0], self.text_dim))
        for rows, length in length_groups(attention_mask, self.config.text.bucket_rows):
            ids, mask = input_ids[rows, :length], attention_mask[rows, :length]  # right-padded: trim the tail
            hidden = self.text_runner(input_ids=ids, attention_mask=mask).last_hidden_state  # (g, t, h)
            pooled[rows] = mean_pool(hidden, mask).float()
        return pooled

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        text = l2_normalize(self.text_vectors(batch["input_ids"], batch["attention_mask"])) * self.text_scale  # (n, h)
        if self.image is None:
            return l2_normalize(text)
        image = torch.zeros((text.shape[0], self.image_dim), dtype=text.dtype)  # (n, f)
        if batch["images"].shape[0]:
            image[batch["has_image"]] = l2_normalize(self.image.features(batch["images"])) * self.image_scale
        return l2_normalize(torch.cat([text, image], dim=1))  # (n, h + f)
