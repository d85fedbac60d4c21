"""Negatives beyond the batch for the sampled softmax: uniform random items and one hard item per row."""

from __future__ import annotations

import torch


def random_negative_logits(
    user_vec: torch.Tensor,
    negative_vec: torch.Tensor,
    temperature: float,
    *,
    log_rate: float | None = None,
    collide: torch.Tensor | None = None,
) -> torch.Tensor:
    """(b, M) logits of each row's user against M uniform random items shared by the batch.
    log_rate: log of the per-step sampling probability of one item (M / N), subtracted as for in-batch
    positives so both kinds of negatives are corrected alike. collide (b, M) bool: a random item that is
    the row's own positive (masked out)."""
    logits = user_vec @ negative_vec.T / temperature  # (b, M)
    if log_rate is not None:
        logits = logits - log_rate
    if collide is not None:
        logits = logits.masked_fill(collide, float("-inf"))  # (b, M)
    return logits


def hard_negative_logit(
    user_vec: torch.Tensor, hard_vec: torch.Tensor, temperature: float, missing: torch.Tensor
) -> torch.Tensor:
    """(b, 1) logit of each row's hard negative (an item near its positive that the user has not
    clicked); missing (b,) bool: rows without one, whose column is -inf."""
    logit = (user_vec * hard_vec).sum(-1, keepdim=True) / temperature  # (b, 1)
    return logit.masked_fill(missing[:, None], float("-inf"))  # (b, 1)
