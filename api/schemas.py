"""Request and response bodies."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from mmrecall.core.interchange import InteractionRecord, ItemRecord
from mmrecall.recall.channels import ALL_CHANNELS, CHANNELS
from mmrecall.recall.filters import RecallFilter

MAX_BATCH = 1000


class ErrorOut(BaseModel):
    detail: str = Field(description="why the request was refused")


# documented on every route: what a refused request answers (422 keeps FastAPI's validation shape)
ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413)}


class ItemsIn(BaseModel):
    items: list[ItemRecord] = Field(min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="after")
    def _distinct_ids_with_content(self) -> ItemsIn:
        ids = [item.id for item in self.items]
        repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if repeated:
            raise ValueError(f"duplicate item ids in one request: {repeated[:10]}")
        empty = [item.id for item in self.items if not item.has_content()]
        if empty:
            raise ValueError(f"items with nothing to encode (no title, tags or media): {empty[:10]}")
        return self


class IngestOut(BaseModel):
    ids: list[str]
    status: str = "pending"


class ItemOut(BaseModel):
    id: str
    title: str
    tags: list[str]
    cover: str | None
    frames: list[str] | None
    video: str | None
    created_at: float | None
    status: str
    error: str | None
    cluster_id: int | None = None
    versions: list[str] = Field(description="encoder versions that have a vector for this item")
    frames_used: int | None = Field(default=None, description="frames of the video or frame list the encoder read")
    frame_thumbnails: int = Field(default=0, description="frames served at media/frame?n=0.. (sampled at encode)")


class InteractionsIn(BaseModel):
    interactions: list[InteractionRecord] = Field(min_length=1, max_length=10_000)


class CountOut(BaseModel):
    count: int


class SimilarItem(BaseModel):
    id: str
    score: float
    title: str | None = None


class SimilarOut(BaseModel):
    item_id: str
    channel: str = "v2v"
    results: list[SimilarItem]
    short_by: int = Field(
        default=0, description="how many fewer than k came back (a selective filter, a small catalogue)"
    )
    filter: dict | None = Field(default=None, description="the filter applied and how many items it allowed")


# a tag filter names a first-level tag (`Comedy`) or a second-level one (`Comedy/stand-up`)
TagFilter = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\s](?:[^/]*[^/\s])?(?:/[^/\s](?:[^/]*[^/\s])?)?$"),
]
ItemIdFilter = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class FilterIn(BaseModel):
    """Query-time filters (recall.filters), applied inside each channel's search."""

    include_tags: list[TagFilter] = Field(
        default_factory=list, max_length=100, description="items with at least one of these tags (level 1 or 1/2)"
    )
    exclude_tags: list[TagFilter] = Field(default_factory=list, max_length=100, description="items with none of these")
    exclude_ids: list[ItemIdFilter] = Field(default_factory=list, max_length=10_000, description="never these items")
    created_after: float | None = Field(default=None, description="items created after this (unix seconds)")
    created_before: float | None = Field(default=None, description="items created before this (unix seconds)")
    new_only: bool = Field(
        default=False, description="only items without behaviour yet (no interaction counted at the last reindex)"
    )

    @model_validator(mode="after")
    def _consistent_filter(self) -> FilterIn:
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite unix seconds")
        if self.created_after is not None and self.created_before is not None:
            if self.created_after >= self.created_before:
                raise ValueError("created_after must be earlier than created_before: no item could pass")
        both = sorted(set(self.include_tags) & set(self.exclude_tags))
        if both:
            raise ValueError(f"tags both included and excluded: {both}")
        return self

    def recall_filter(self) -> RecallFilter:
        return RecallFilter(
            include_tags=tuple(self.include_tags),
            exclude_tags=tuple(self.exclude_tags),
            exclude_ids=tuple(self.exclude_ids),
            created_after=self.created_after,
            created_before=self.created_before,
            new_only=self.new_only,
        )


class RecallIn(FilterIn):
    user_id: str | None = Field(default=None, max_length=128, description="recall from this user's stored history")
    history: list[str] | None = Field(default=None, max_length=1000, description="or from these item ids, oldest first")
    times: list[float] | None = Field(
        default=None,
        max_length=1000,
        description="unix seconds of each history item (the sequence tower reads the gaps between them)",
    )
    k: int = Field(default=100, ge=1, le=1000)
    channels: list[Literal[ALL_CHANNELS]] = Field(  # type: ignore[valid-type]
        default=list(CHANNELS),
        min_length=1,
        description="channels to merge; left out: the history's channels, plus popular, trending and latest for "
        "a history shorter than the fallback threshold (a new user reads only those)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RecallIn:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history (an empty history: a user without one)")
        if self.times is not None and len(self.times) != len(self.history or []):
            raise ValueError("times must give one timestamp per history item")
        if self.times is not None and not all(math.isfinite(t) for t in self.times):
            raise ValueError("times must be finite unix seconds")
        return self


class RecallItem(BaseModel):
    id: str
    score: float
    similarity: float
    channels: list[str]
    diversity_gain: float
    sources: list[dict] = Field(description="per channel: its score and the trigger item or interest")
    title: str | None = None


class RecallOut(BaseModel):
    user_id: str | None
    history_used: int
    channels: dict[str, int] = Field(description="candidates each channel gave before the merge")
    results: list[RecallItem]
    short_by: int = Field(
        default=0, description="how many fewer than k came back (a selective filter, a small catalogue)"
    )
    filter: dict | None = Field(default=None, description="the filter applied and how many items it allowed")
    fallback: bool = Field(
        default=False, description="the history was too short: the non-personalised channels were merged in"
    )
    degraded: str | None = Field(
        default=None,
        description="why this is less than the full answer: the database did not answer, so a user's stored "
        "history was not read and the non-personalised channels answered from the loaded snapshot",
    )


class ClusterOut(BaseModel):
    cluster_id: int
    size: int
    top_tags: list[dict]
    items: list[dict]


class JobOut(BaseModel):
    id: str
    kind: str
    state: str
    done: int
    total: int
    progress: float
    message: str | None
    error: str | None
    result: dict | None
    created_at: float
    updated_at: float


class TrainIn(BaseModel):
    epochs: int | None = Field(default=None, ge=1, le=1000, description="G's epochs (default: until validation stops)")
    user_tower: Literal["pool", "seq", "both"] | None = Field(
        default=None, description="G's user tower; both: train one G with each, serve the better on held-out"
    )
    features: list[str] | None = Field(default=None, min_length=1, max_length=8, description="encoders feeding G")
    pretrain: list[Literal["tag-image", "dual-stream"]] | None = Field(
        default=None, max_length=2, description="feature encoders trained first on the catalogue, then fed to G"
    )
    sequential: bool = Field(
        default=False, description="also train the sequential channel's SASRec on the interactions, served beside G"
    )
    activate: bool = Field(default=True, description="serve the trained G (re-encode, reindex, swap)")


class JobCreated(BaseModel):
    job_id: str
    state: str
    warning: str | None = Field(default=None, description="e.g. no worker answers yet to run the job")


class EvalIn(BaseModel):
    dataset: str = Field(description="dataset directory (interchange format) inside the media roots")
    channels: list[str] | None = None
    protocol: Literal["last", "cold", "both"] = "both"
    split: Literal["test", "valid"] = "test"
    encoder: str | None = None


class ActivateIn(BaseModel):
    encoder: str = Field(description="a registered encoder name or a checkpoint directory")
