"""Request and response bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mmrecall.interchange import InteractionRecord, ItemRecord

MAX_BATCH = 1000


class ItemsIn(BaseModel):
    items: list[ItemRecord] = Field(min_length=1, max_length=MAX_BATCH)


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
    versions: list[str] = Field(description="encoder versions that have a vector for this item")


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
    results: list[SimilarItem]


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


class JobCreated(BaseModel):
    job_id: str
    state: str


class EvalIn(BaseModel):
    dataset: str = Field(description="dataset directory (interchange format) inside the media roots")
    channels: list[str] | None = None
    protocol: Literal["last", "cold", "both"] = "both"
    split: Literal["test", "valid"] = "test"
    encoder: str | None = None


class ActivateIn(BaseModel):
    encoder: str = Field(description="a registered encoder name or a checkpoint directory")
