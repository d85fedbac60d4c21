"""The one runtime settings object, read from `MMRECALL_*` environment variables.

Architecture lives in encoder configs (`encoders/configs/*.json`); this holds only what differs between
deployments: where the database, the broker and the files are. Two instances with different values
run side by side on one machine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mmrecall.core.events import EventRule, parse_rules
from mmrecall.core.merge_weights import MergeWeights


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMRECALL_", extra="ignore")

    home: Path = Field(default=Path(".mmrecall"), description="Indexes, snapshots, checkpoints, uploads.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default: SQLite file under home.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field(default="mmrecall", description="Celery queue name; distinct per instance.")
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Directories media paths must resolve into (comma-separated)."
    )
    # text alone: fused with an image backbone, items split by whether they have a cover (docs/models.md)
    encoder: str = Field(default="text-minilm", description="Active encoder variant (registry name).")
    image_checkpoint: Path | None = Field(default=None, description="Local state dict for the image backbone.")
    text_model_dir: Path | None = Field(default=None, description="Local Hugging Face model directory.")
    encode_batch_size: int = 32
    index_factory: str = Field(default="auto", description="faiss factory string, or 'auto' to pick by size.")
    # exact search reads every vector per query (about 0.1 ms per 1,000 items at 256-d here): at 20k it costs
    # what HNSW costs at 1M; at 100k a /v1/recall spent 9.5 of its 12 ms in it
    exact_search_below: int = Field(default=20_000, description="'auto' uses exact search below this size.")
    vector_store: str = Field(
        default="faiss",
        description="Where the item vectors are searched: `faiss` (in process, each snapshot's own index), "
        "`milvus://HOST:PORT` (a Milvus server or cluster; a reindex writes a new collection and moves the alias), "
        "`faiss:///DIR` (the faiss store in a directory). Checked at start-up: an unreachable store, a missing "
        "collection or vectors of another dimension stop the API with the reason.",
    )
    vector_store_alias: str = Field(
        default="mmrecall_items",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="The alias that names the serving collection in the vector store; each reindex's collection "
        "is named after it and the snapshot.",
    )
    cluster_k: int = Field(default=0, description="k-means clusters at reindex; 0 = about 4 sqrt(n).")
    v2v_table_size: int = Field(default=100, description="Neighbours kept per item in the v2v table.")
    v2v_table_ef_search: int = Field(
        default=0,
        description="HNSW efSearch while building the v2v table (one query per item: speed matters); "
        "0 = tuned at reindex to the target recall on item queries.",
    )
    ann_target_recall: float = Field(
        default=0.96,
        gt=0,
        le=1,
        description="Reindex tunes the HNSW search breadth to the smallest that reaches this recall@100.",
    )
    api_faiss_threads: int = Field(
        default=1, description="OpenMP/BLAS threads per search in the API: requests run in parallel already."
    )
    api_fast_paths: bool = Field(
        default=True,
        description="Answer /v1/similar and /v1/recall beneath the framework when all they need is in memory "
        "(anything else still goes through the FastAPI routes).",
    )
    api_workers: int = Field(default=1, description="API processes for `mmrecall serve`; they share the snapshot.")
    refresh_interval_s: float = Field(default=0.25, description="How often the API picks up new vectors.")
    max_upload_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = Field(default=8 * 1024 * 1024, description="Largest JSON request body (413 above).")
    api_keys: str = Field(default="", repr=False, description='"KEY1:write,KEY2:read"; empty: loopback only.')
    media_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts media URLs may be fetched from (comma-separated); none by default."
    )
    max_media_bytes: int = Field(default=50 * 1024 * 1024, description="Largest media file fetched from a URL.")
    reconcile_after_s: float = Field(
        default=600.0, description="Items pending/encoding this long without progress are enqueued again."
    )
    max_encode_attempts: int = Field(default=3, description="Encode attempts per item before it is failed.")
    reconcile_every_s: float = Field(default=60.0, description="How often a worker runs the reconcile sweep.")
    broker_visibility_s: float = Field(
        default=3600.0,
        gt=0,
        description="A task taken but not acknowledged this long (its worker died) is delivered to another "
        "worker (Redis's visibility timeout). Longer than the longest encode batch.",
    )
    job_stale_after_s: float = Field(
        default=3600.0, description="A running job without progress this long is marked failed (worker lost)."
    )
    job_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs of a train, reindex or backfill job whose worker was lost: reconcile sends it "
        "again (a training goes on from its last whole epoch) until this many have started, then fails it.",
    )
    torch_threads: int = Field(default=0, description="torch threads per worker process; 0 = torch's default.")
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How much workers lower their CPU priority (nice): beside API processes on one machine, "
        "reads stay fast while a training or a reindex runs; 0 keeps the default priority.",
    )
    train_every_s: float = Field(
        default=0.0,
        ge=0,
        description="Retrain G from the catalogue and serve it this often (the worker started with --beat "
        "schedules it); 0: never.",
    )
    merge: dict[str, Any] = Field(
        default_factory=dict,
        description='Recall-set merge weights as JSON, e.g. {"mode": "rank", "rrf_k": 10, "explore": 4}: the fields '
        "of core.merge_weights.MergeWeights, replacing the ones the snapshot's reindex tuned. Empty: the tuned ones "
        "(a G snapshot's, in its snapshot.json under `recall`), else MIC's 1 : 0.5 : 0.2.",
    )

    events: dict[str, Any] = Field(
        default_factory=dict,
        description='What each interaction event means, as JSON: {"name": {"kind": "positive"|"negative"|"read", '
        '"weight": 1.0, "negative_at_most": null}} (core.events). Empty: the defaults (click, view, watch, rating, '
        "like, share, purchase positive; impression read; dislike, not_interested negative). Interactions with "
        "other names are refused.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`mmrecall serve`'s logs: text, or one JSON object per line; both carry the request id.",
    )
    fallback_below: int = Field(
        default=3,
        ge=0,
        description="A recall whose user has fewer known history items than this also reads the non-personalised "
        "channels (popular, trending, latest); a user without history reads only them.",
    )
    read_exclude_s: float = Field(
        default=86400.0, ge=0, description="Items a user was shown but did not act on are not recalled this long."
    )

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_rules(value)  # raises with what is wrong
        return value

    @property
    def event_rules(self) -> dict[str, EventRule]:
        return parse_rules(self.events)

    @field_validator("merge")
    @classmethod
    def _check_merge(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(MergeWeights.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown merge fields {unknown}; known: {sorted(MergeWeights.__dataclass_fields__)}")
        MergeWeights(**value)  # its own checks (the mode)
        return value

    @field_validator("media_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("media_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'mmrecall.db').resolve()}"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def thumbnails_dir(self) -> Path:
        return self.home / "thumbnails"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.snapshots_dir, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
