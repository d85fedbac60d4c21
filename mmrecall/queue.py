"""The Celery app's configuration and the task names: the one place producers and workers agree on.

The API and the CLI send tasks by name through this client and never import `workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from celery import Celery

from mmrecall.settings import Settings

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


def enqueue_reindex(settings: Settings, job_id: str) -> str:
    return client(settings).send_task(REINDEX_TASK, args=[job_id], queue=settings.queue).id


def enqueue_eval(settings: Settings, job_id: str) -> str:
    return client(settings).send_task(EVAL_TASK, args=[job_id], queue=settings.queue).id


def enqueue_training(settings: Settings, job_id: str) -> str:
    return client(settings).send_task(TRAIN_TASK, args=[job_id], queue=settings.queue).id


def enqueue_backfill(settings: Settings, job_id: str) -> str:
    return client(settings).send_task(BACKFILL_TASK, args=[job_id], queue=settings.queue).id


def workers_alive(settings: Settings, timeout: float = 1.0) -> int:
    """How many workers answer a ping on this instance's broker."""
    replies = client(settings).control.ping(timeout=timeout)
    return len(replies or [])
