"""Streaming item-frequency estimation for the log-q correction (Yi et al., RecSys 2019).

Per hash function, arrays A (the step an item's bucket was last seen) and B (the average gap between
sightings); on a sighting at step t: B <- (1 - alpha) B + alpha (t - A); A <- t. The sampling
probability per step is q = 1 / B, taking the largest B over the hash functions (collisions only shorten gaps).
"""

from __future__ import annotations

import torch

from mmrecall.core.features import hashed_buckets


class StreamingFrequency:
    def __init__(self, buckets: int = 1 << 16, hashes: int = 3, alpha: float = 0.05, initial_gap: float = 100.0):
        self.buckets, self.hashes, self.alpha = buckets, hashes, alpha
        self.last_seen = torch.zeros(hashes, buckets)  # A
        self.gap = torch.full((hashes, buckets), float(initial_gap))  # B
        self.rows = torch.arange(hashes)[:, None]

    def update(self, keys: torch.Tensor, step: int) -> None:
        """Record the items (int64 keys) sampled at this step; repeats within a step count once."""
        index = torch.from_numpy(hashed_buckets(torch.unique(keys).numpy(), self.buckets, self.hashes)).T  # (hashes, m)
        seen = self.last_seen[self.rows, index]
        fresh = self.gap[self.rows, index] * (1 - self.alpha) + self.alpha * (step - seen)
        self.gap[self.rows, index] = torch.where(seen > 0, fresh, self.gap[self.rows, index])
        self.last_seen[self.rows, index] = float(step)

    def log_q(self, keys: torch.Tensor) -> torch.Tensor:
        """(n,) log of the estimated per-step sampling probability."""
        index = torch.from_numpy(hashed_buckets(keys.numpy(), self.buckets, self.hashes)).T  # (hashes, n)
        gap = self.gap[self.rows, index].max(dim=0).values.clamp(min=1.0)  # (n,)
        return -torch.log(gap)
