"""The sequence tower's masked-item task: the state at a masked slot must find that item's G vector among
the batch's masked items (InfoNCE), as BERT4Rec's cloze task does for ids."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_item_loss(
    reconstructed: torch.Tensor, truth: torch.Tensor, items: torch.Tensor, temperature: float
) -> torch.Tensor:
    """reconstructed (m, d): the tower's guess at each masked slot; truth (m, d): the hidden items' G
    vectors; items (m,): their ids (another slot hiding the same item is no negative)."""
    hidden = F.normalize(reconstructed, dim=-1)  # (m, d)
    target = F.normalize(truth, dim=-1)  # (m, d)
    logits = hidden @ target.T / temperature  # (m, m)
    same = (items[:, None] == items[None, :]) & ~torch.eye(len(items), dtype=torch.bool)  # (m, m)
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(items)))
