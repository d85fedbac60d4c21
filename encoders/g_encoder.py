"""G as an encoder: an item's content through the feature encoders, concatenated, through G.

Its vectors are normalize(ECi): content only, so a brand-new item gets the same kind of vector as an
old one. A G checkpoint directory (written by `mmrecall finetune g`) holds g.json, model.pt and an
encoder.json of kind "g", so the registry, the workers and activation treat it like any encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from encoders.base import ContentInput, Encoder, l2_normalize, weights_digest
from encoders.config import EncoderConfig
from encoders.content_g import CONFIG_FILE, GConfig, TwoTower


class GEncoder(Encoder):
    def __init__(self, config: EncoderConfig, *, weights: str | Path | None = None, **_unused) -> None:
        if weights is None:
            raise ValueError("a G encoder is a trained checkpoint: pass its directory (mmrecall finetune g)")
        directory = Path(weights).parent
        self.g_config = GConfig.from_json((directory / CONFIG_FILE).read_text())
        from encoders.registry import checkpoint_dir, get_encoder

        specs = self.g_config.feature_encoders
        feature_weights = [checkpoint_dir(s) / "model.pt" if checkpoint_dir(s) else None for s in specs]
        super().__init__(config, weights_digest=weights_digest(weights, *feature_weights) + "|" + ",".join(specs))
        self.features = [get_encoder(spec) for spec in specs]
        self.model = TwoTower(self.g_config)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))  # save_g's layout
        self.net = nn.ModuleDict({"g": self.model}).eval()

    @property
    def dim(self) -> int:
        return self.g_config.dim

    @property
    def uses_images(self) -> bool:
        return any(encoder.uses_images for encoder in self.features)

    @property
    def n_frames(self) -> int:
        return max(encoder.n_frames for encoder in self.features)

    def preprocess(self, items: Sequence[ContentInput]) -> dict[str, torch.Tensor]:
        parts = [torch.from_numpy(encoder.encode(items)) for encoder in self.features]  # each (n, d_k)
        return {"features": torch.cat(parts, dim=1)}  # (n, F)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return l2_normalize(self.model.g(batch["features"]))  # (n, dim): normalize(ECi)
