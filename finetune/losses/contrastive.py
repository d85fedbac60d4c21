"""Dual-stream pretraining's terms: symmetric InfoNCE for text–frame alignment and the masked-token head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCE(nn.Module):
    """Symmetric in-batch contrastive loss between two aligned sets of unit vectors (row i <-> row i)."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = a @ b.T / self.temperature  # (n, n)
        labels = torch.arange(a.shape[0], device=a.device)  # (n,)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class MaskedLMHead(nn.Module):
    """BERT's prediction head over fused token states, decoding through the text stream's word embeddings."""

    def __init__(self, hidden: int, embeddings: nn.Embedding) -> None:
        super().__init__()
        width = embeddings.embedding_dim
        self.transform = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.LayerNorm(width))
        self.embeddings = embeddings  # tied: (vocab, width)
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.transform(states) @ self.embeddings.weight.T + self.bias  # (m, vocab)
