"""G's main term: each row's positive against sampled negatives, one cross-entropy over the columns.

The columns are built by the modules beside this one: the batch's other positives with the log-q
correction (Yi et al., RecSys 2019: an item sampled often as another row's positive would otherwise be
pushed down for its popularity), uniform random negatives corrected by their sampling rate, and one hard
negative per row. Column 0..b-1 of the first block must be the in-batch block: row i's label is i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_logits(
    user_vec: torch.Tensor,
    target_vec: torch.Tensor,
    temperature: float,
    *,
    log_q: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """(b, b) logits of every row's user against every row's positive; row i's positive is column i.
    log_q (b,): log of each positive's estimated sampling probability, subtracted from its column.
    excluded (b, b) bool: pairs that are no negatives (another row's copy of my positive, my own user's)."""
    logits = user_vec @ target_vec.T / temperature  # (b, b)
    if log_q is not None:
        logits = logits - log_q[None, :]  # (b, b)
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))  # (b, b)
    return logits


def sampled_softmax(columns: list[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of row i against column i of the concatenated logit blocks, (b, b + ...) in all;
    weights (b,): per-row weights (e.g. ratings), normalised to sum 1."""
    logits = torch.cat(columns, dim=1)  # (b, b + M + 1)
    per_row = F.cross_entropy(logits, torch.arange(logits.shape[0]), reduction="none")  # (b,)
    if weights is not None:
        return (per_row * weights).sum() / weights.sum()
    return per_row.mean()
