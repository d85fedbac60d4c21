"""VideoBERT-style dual-stream encoder: a text stream over the title, a frame stream over sampled frames,
late fusion by cross-attention between the streams.

text:   "title. tags" -> MiniLM token states -> linear to `hidden`
frames: per-frame features of a frozen image model (backbone, or a tag-image checkpoint's first FC layer)
        -> linear to `hidden` + position embeddings, a [CLS] slot first -> temporal transformer
fusion: text tokens attend to frames and frames attend to text (`fusion_layers` each way)
out:    joint = MLP([mean fused tokens, fused frame CLS]); text / frame = each stream's own vector before
        fusion. All L2-normalized, `out_dim` wide. An item with no frame still has the frame [CLS] slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrecall.encoders.base import ContentInput, Encoder, l2_normalize, weights_digest
from mmrecall.encoders.config import DualStreamConfig, EncoderConfig, ImageConfig
from mmrecall.encoders.image import ImageStack
from mmrecall.encoders.registry import create_encoder, register_kind
from mmrecall.encoders.text import build_text_model, load_tokenizer


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)  # (n, t, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (n, h)


class CrossLayer(nn.Module):
    """`x` attends to `y`, then a feed-forward block; pre-norm residuals."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden, hidden)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_padding: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(y)
        attended, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=y_padding, need_weights=False)
        x = x + attended  # (n, tx, h)
        return x + self.ff(self.norm_ff(x))


class DualStreamModel(nn.Module):
    def __init__(self, text_model: nn.Module, text_dim: int, frame_dim: int, config: DualStreamConfig) -> None:
        super().__init__()
        h = config.hidden
        self.config = config
        self.text = text_model
        self.text_proj = nn.Linear(text_dim, h)
        self.frame_proj = nn.Sequential(nn.LayerNorm(frame_dim), nn.Linear(frame_dim, h))
        self.frame_cls = nn.Parameter(torch.zeros(1, 1, h))
        self.frame_mask_token = nn.Parameter(torch.zeros(1, 1, h))  # stands in for a masked frame (pretraining)
        self.frame_pos = nn.Embedding(config.n_frames + 1, h)
        layer = nn.TransformerEncoderLayer(h, config.heads, 4 * h, dropout=0.1, batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
        self.text_to_frames = nn.ModuleList(CrossLayer(h, config.heads) for _ in range(config.fusion_layers))
        self.frames_to_text = nn.ModuleList(CrossLayer(h, config.heads) for _ in range(config.fusion_layers))
        self.text_out = nn.Linear(h, config.out_dim)
        self.frame_out = nn.Linear(h, config.out_dim)
        self.joint_out = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, config.out_dim))
        nn.init.normal_(self.frame_cls, std=0.02)
        nn.init.normal_(self.frame_mask_token, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,  # (n, t)
        attention_mask: torch.Tensor,  # (n, t), 1 = token
        frame_features: torch.Tensor,  # (n, f, F)
        frame_mask: torch.Tensor,  # (n, f), True = a real frame
        masked_frames: torch.Tensor | None = None,  # (n, f), True = replace with the mask token
    ) -> dict[str, torch.Tensor]:
        n, f = frame_mask.shape
        tokens = self.text_proj(self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)
        frames = self.frame_proj(frame_features)  # (n, f, h)
        if masked_frames is not None:
            frames = torch.where(masked_frames.unsqueeze(-1), self.frame_mask_token.expand_as(frames), frames)
        frames = torch.cat([self.frame_cls.expand(n, 1, -1), frames], dim=1)  # (n, f + 1, h)
        frames = frames + self.frame_pos(torch.arange(f + 1, device=frames.device))[None]
        frame_padding = torch.cat([torch.zeros(n, 1, dtype=torch.bool), ~frame_mask], dim=1)  # (n, f + 1)
        frames = self.temporal(frames, src_key_padding_mask=frame_padding)  # (n, f + 1, h)
        text_padding = attention_mask == 0  # (n, t)
        text_vec = self.text_out(masked_mean(tokens, attention_mask))  # (n, out)
        frame_vec = self.frame_out(frames[:, 0])  # (n, out)
        fused_tokens, fused_frames = tokens, frames
        for to_frames, to_text in zip(self.text_to_frames, self.frames_to_text, strict=True):
            fused_tokens, fused_frames = (
                to_frames(fused_tokens, fused_frames, frame_padding),
                to_text(fused_frames, fused_tokens, text_padding),
            )
        joint = self.joint_out(torch.cat([masked_mean(fused_tokens, attention_mask), fused_frames[:, 0]], dim=-1))
        return {
            "joint": l2_normalize(joint),  # (n, out)
            "text": l2_normalize(text_vec),  # (n, out)
            "frame": l2_normalize(frame_vec),  # (n, out)
            "fused_tokens": fused_tokens,  # (n, t, h)
            "fused_frames": fused_frames,  # (n, f + 1, h): [CLS] then the frames
        }


class FrameFeatures(nn.Module):
    """Frozen per-frame features: pooled backbone output, or a tag-image model's first FC layer."""

    def __init__(self, image: ImageConfig, source: str, image_checkpoint: str | Path | None) -> None:
        super().__init__()
        if source == "backbone":
            self.stack = ImageStack(image, image_checkpoint)
            self.head = None
            self.dim = self.stack.dim
        else:
            tagged = create_encoder(source)
            self.stack, self.head = tagged.image, tagged.head
            self.dim = tagged.dim
        self.backbone = self.stack.backbone.module
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.stack.features(pixels)  # (m, F)
        return self.head(features)[0] if self.head is not None else features


@register_kind("dual-stream")
class DualStreamEncoder(Encoder):
    def __init__(
        self,
        config: EncoderConfig,
        *,
        image_checkpoint: str | Path | None = None,
        text_model_dir: str | Path | None = None,
        weights: str | Path | None = None,
    ) -> None:
        if config.text is None or config.image is None or config.dual is None:
            raise ValueError(f"encoder {config.name!r}: dual-stream needs text, image and dual sections")
        source = config.dual.frame_features
        frame_model = None if source == "backbone" else Path(source) / "model.pt"
        super().__init__(config, weights_digest=weights_digest(image_checkpoint, text_model_dir, weights, frame_model))
        torch.manual_seed(config.seed)
        model_dir = Path(text_model_dir) if text_model_dir else None
        self.tokenizer = load_tokenizer(model_dir if config.text.kind == "minilm" else None)
        text_model = build_text_model(config.text, model_dir)
        self.frames = FrameFeatures(config.image, source, None if weights else image_checkpoint)
        self.model = DualStreamModel(text_model, int(text_model.config.hidden_size), self.frames.dim, config.dual)
        self.net = nn.ModuleDict({"model": self.model, "frames": self.frames})
        if weights:
            self.load_weights(weights)
        self.net.eval()

    @property
    def dim(self) -> int:
        return self.config.dual.out_dim

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.text.max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def preprocess(self, items: Sequence[ContentInput]) -> dict[str, torch.Tensor]:
        batch = self.tokenize([item.text() for item in items])
        frames = [item.all_frames()[: self.config.dual.n_frames] for item in items]
        batch["frame_counts"] = torch.tensor([len(f) for f in frames], dtype=torch.long)  # (n,)
        batch["pixels"] = self.frames.stack.to_tensor([img for item_frames in frames for img in item_frames])
        return batch

    def frame_tensor(self, features: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item frame features padded to n_frames: (n, f, F) and the mask of real frames (n, f)."""
        n, f = counts.shape[0], self.config.dual.n_frames
        padded = torch.zeros((n, f, features.shape[-1] if features.numel() else self.frames.dim))
        mask = torch.arange(f)[None, :] < counts[:, None]  # (n, f)
        padded[mask] = features
        return padded, mask

    def streams(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.frames(batch["pixels"]) if batch["pixels"].shape[0] else torch.zeros((0, self.frames.dim))
        padded, mask = self.frame_tensor(features, batch["frame_counts"])
        return self.model(batch["input_ids"], batch["attention_mask"], padded, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.streams(batch)["joint"]

    @torch.inference_mode()
    def encode_streams(self, items: Sequence[ContentInput]) -> dict[str, np.ndarray]:
        """The joint vector and each stream's own vector, float32 (n, out_dim) each."""
        out = self.streams(self.preprocess(items))
        return {key: out[key].float().numpy() for key in ("joint", "text", "frame")}
