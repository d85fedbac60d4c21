"""The merge's weights (MIC's rerank and the channel fusion): a plain record, so the settings object can
check a deployment's `MMRECALL_MERGE` at start-up and the recall service can read the same record."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MergeWeights:
    similarity: float = 1.0
    alpha: float = 0.5  # per recalling channel
    beta: float = 0.2  # per unit of tag-diversity gain
    quotas: dict[str, int] = field(default_factory=dict)  # channel -> most candidates taken from it
    trust: dict[str, float] = field(default_factory=dict)  # channel -> factor on its similarities (default 1)
    # "score": a candidate's similarity is the best trusted score any channel gave it (MIC);
    # "rank": weighted reciprocal-rank fusion, sum over channels of trust / (rrf_k + rank), scaled to (0, 1]:
    # robust when channels' scores are not comparable (a dot product vs a recency-weighted sum)
    mode: str = "score"
    rrf_k: float = 60.0
    # exploration slots: the last `explore` places of the list go to the best candidates that `lead` (the
    # channel that dominates the ranking) did not recall, so the other channels always show some of their own
    explore: int = 0
    lead: str = "personal"

    def __post_init__(self) -> None:
        if self.mode not in ("score", "rank"):
            raise ValueError(f"merge mode must be score or rank, not {self.mode!r}")
