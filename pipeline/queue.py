"""The Celery app's configuration and the task names: the one place producers and workers agree on.

The API and the CLI send tasks by name through this client and never import `workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from celery import Celery

from mmrecall.core.settings import Settings
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

ENCODE_TASK = "mmrecall.encode_items"
REINDEX_TASK = "mmrecall.reindex"
EVAL_TASK = "mmrecall.evaluate"
TRAIN_TASK = "mmrecall.train"
BACKFILL_TASK = "mmrecall.backfill"


def make_celery(settings: Settings) -> Celery:
    app = Celery("mmrecall", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        # JSON only: a broker message must never be able to run code in a worker
        accept_content=["json"],
        task_default_queue=settings.queue,
        task_default_routing_key=settings.queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache(maxsize=8)
def _client(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def client(settings: Settings) -> Celery:
    return _client(settings.model_dump_json())


def enqueue_encode(settings: Settings, item_ids: Sequence[str]) -> list[str]:
    """One task per batch of ids; returns the Celery task ids."""
    size = max(1, settings.encode_batch_size)
    app = client(settings)
    return [
        app.send_task(ENCODE_TASK, args=[list(item_ids[i : i + size])], queue=settings.queue).id
        for i in range(0, len(item_ids), size)
    ]


def task_for(kind: str) -> str:
    """The Celery task that runs a job of this kind."""
    if kind.startswith("finetune:"):
        return TRAIN_TASK
    tasks = {"reindex": REINDEX_TASK, "eval": EVAL_TASK, "backfill": BACKFILL_TASK}
    if kind not in tasks:
        raise ValueError(f"no task runs jobs of kind {kind!r}")
    return tasks[kind]


def submit_job(settings: Settings, kind: str, params: dict | None = None) -> str:
    """Commit the job row first (the database is the source of truth), then enqueue its task; the job id."""

    task = task_for(kind)
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, kind, params).id
    client(settings).send_task(task, args=[job_id], queue=settings.queue)
    return job_id


def workers_alive(settings: Settings, timeout: float = 1.0) -> int:
    """How many workers answer a ping on this instance's broker."""
    replies = client(settings).control.ping(timeout=timeout)
    return len(replies or [])
