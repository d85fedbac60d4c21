"""G as an encoder: an item's content through the feature encoders, concatenated, through G.

Its vectors are normalize(ECi + EPi) for items G saw in training (the evaluation showed the item bias
helps warm items: hitRate@50 0.328 vs 0.233 by content alone on MovieLens) and normalize(ECi) for every
other item, so a brand-new item is served by content alone. A G checkpoint directory (written by
`mmrecall finetune g`) holds g.json, model.pt, known_items.json and an encoder.json of kind "g", so the
registry, the workers and activation treat it like any encoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrecall.core.features import keys_of
from mmrecall.encoders.base import ContentInput, Encoder, weights_digest
from mmrecall.encoders.config import EncoderConfig
from mmrecall.encoders.content_g import CONFIG_FILE, KNOWN_ITEMS_FILE, GConfig, TwoTower
from mmrecall.encoders.registry import checkpoint_dir, get_encoder, register_kind


def g_weights_digest(weights: str | Path) -> str:
    """G's weights and its feature encoders' (the registry stamps the same version without building G)."""
    specs = GConfig.from_json((Path(weights).parent / CONFIG_FILE).read_text()).feature_encoders
    feature_weights = [checkpoint_dir(s) / "model.pt" if checkpoint_dir(s) else None for s in specs]
    return weights_digest(weights, *feature_weights) + "|" + ",".join(specs)


@register_kind("g")
class GEncoder(Encoder):
    checkpoint_digest = staticmethod(g_weights_digest)  # the version the registry stamps without building G

    def __init__(self, config: EncoderConfig, *, weights: str | Path | None = None, **_unused) -> None:
        if weights is None:
            raise ValueError("a G encoder is a trained checkpoint: pass its directory (mmrecall finetune g)")
        directory = Path(weights).parent
        self.g_config = GConfig.from_json((directory / CONFIG_FILE).read_text())
        super().__init__(config, weights_digest=g_weights_digest(weights))
        self.features = [get_encoder(spec) for spec in self.g_config.feature_encoders]
        self.model = TwoTower(self.g_config)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))  # save_g's layout
        self.net = nn.ModuleDict({"g": self.model}).eval()
        known = directory / KNOWN_ITEMS_FILE
        self.known_items = set(json.loads(known.read_text())) if known.is_file() else set()

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
        ids = [item.item_id or "" for item in items]
        return {
            "features": torch.cat(parts, dim=1),  # (n, F)
            "keys": torch.from_numpy(keys_of(ids)),  # (n,)
            "known": torch.tensor([i in self.known_items for i in ids], dtype=torch.bool),  # (n,)
        }

    @property
    def feature_versions(self) -> list[str]:
        """The versions of the encoders whose vectors G reads, in the order it concatenates them."""
        return [encoder.version for encoder in self.features]

    @torch.inference_mode()
    def encode_features(self, features: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """(n, dim) from the feature encoders' vectors (n, F) concatenated as `preprocess` does: the vectors
        the workers stored for the same versions stand in for computing them again."""
        batch = {
            "features": torch.from_numpy(np.ascontiguousarray(features, np.float32)),
            "keys": torch.from_numpy(keys_of(list(item_ids))),
            "known": torch.tensor([i in self.known_items for i in item_ids], dtype=torch.bool),
        }
        return self.forward(batch).float().numpy()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        content = self.model.g(batch["features"])  # (n, dim): ECi
        return self.model.items(content, batch["keys"], batch["known"])  # normalize(ECi [+ EPi where known])
