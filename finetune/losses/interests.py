"""Terms over a user's K interests (the sequence tower, MIND-style single activation):

- `best_interest`: each row trains only the interest that best matches its target;
- `disagreement`: keeps a user's interests apart (mean cosine between different interests);
- `balance`: keeps the batch's rows from all routing to one interest (Switch-Transformer-style load term);
- `dense_all_action`: PinnerFormer's dense all-action task, a later item predicted by its own best interest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def best_interest(interests: torch.Tensor, target_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """interests (R, K, d), target_vec (R, d) -> (match (R, K), choice (R,)): each row's interest scores
    and the one it trains (no gradient through the choice)."""
    match = torch.einsum("rkd,rd->rk", interests, target_vec)  # (R, K)
    return match, match.detach().argmax(dim=1)  # (R, K), (R,)


def disagreement(interests: torch.Tensor) -> torch.Tensor:
    """Mean cosine between a row's different interests, (R, K, d) unit -> scalar; 0 when orthogonal."""
    k = interests.shape[1]
    gram = interests @ interests.transpose(1, 2)  # (R, K, K) cosines
    off = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # (R,)
    return (off / (k * (k - 1))).mean()


def balance(match: torch.Tensor, temperature: float) -> torch.Tensor:
    """K · Σ share² over the batch's soft routing, match (R, K) -> scalar: 1 when the rows spread evenly
    over the interests, K when one interest wins all."""
    k = match.shape[1]
    share = torch.softmax(match / temperature, dim=1).mean(dim=0)  # (K,)
    return k * (share**2).sum()


def dense_all_action(
    interests: torch.Tensor,
    later_vec: torch.Tensor,
    softmax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Each row also predicts one item from the user's next few (later_vec (R, d)), through its best
    interest for that item, scored by the same sampled softmax as the next item (softmax(user, target))."""
    _, best = best_interest(interests, later_vec)  # (R,)
    return softmax(interests[torch.arange(len(later_vec)), best], later_vec)
