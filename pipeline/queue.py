"""The Celery app's configuration and the task names: the one place producers and workers agree on.

The API and the CLI send tasks by name through this client and never import `workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from mmrecall.core.errors import ServiceUnavailable
from mmrecall.core.settings import Settings
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

ENCODE_TASK = "mmrecall.encode_items"
REINDEX_TASK = "mmrecall.reindex"
EVAL_TASK = "mmrecall.evaluate"
TRAIN_TASK = "mmrecall.train"
BACKFILL_TASK = "mmrecall.backfill"
SCHEDULED_TRAIN_TASK = "mmrecall.scheduled_train"  # sent by the beat every MMRECALL_TRAIN_EVERY_S
BROKER_TIMEOUT_S = 2.0  # a broker that does not answer a ping in this long is down, for every caller


class BrokerUnavailable(ServiceUnavailable):
    """The broker does not answer: nothing can be queued (HTTP 503; the CLI prints this one line)."""


class NoWorker(ServiceUnavailable):
    """No worker answers on this instance's queue: a job would wait for ever (HTTP 503)."""


@lru_cache(maxsize=8)
def _broker(url: str) -> redis.Redis:
    """One pooled connection per broker URL: the check before every write costs a ping, not a connect."""
    return redis.Redis.from_url(url, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S)


def check_broker(settings: Settings) -> None:
    """Raise BrokerUnavailable within BROKER_TIMEOUT_S when the broker does not answer a ping."""
    try:
        _broker(settings.redis_url).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerUnavailable(f"the broker at {settings.redis_url} does not answer ({exc})") from exc


def no_worker_message(settings: Settings) -> str:
    return (
        f"no worker answers on queue {settings.queue!r} at {settings.redis_url}: start one with `mmrecall worker` "
        "(or run the command with --local)"
    )


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
        beat_schedule=(
            {
                "retrain": {
                    "task": SCHEDULED_TRAIN_TASK,
                    "schedule": settings.train_every_s,
                    "options": {"queue": settings.queue},
                }
            }
            if settings.train_every_s > 0
            else {}
        ),
        broker_connection_retry_on_startup=True,
        # a producer whose broker is gone fails within seconds instead of retrying for ever
        broker_connection_timeout=BROKER_TIMEOUT_S,
        broker_transport_options={
            "socket_connect_timeout": BROKER_TIMEOUT_S,
            "socket_timeout": 5.0,
            # an acks_late task whose worker died goes back to the queue for any worker after this long,
            # found by a sweep every few seconds (kombu's default sweeps every 100 s: 10 s x 10)
            "visibility_timeout": settings.broker_visibility_s,
            "unacked_restore_interval": max(1, min(10, int(settings.broker_visibility_s / 2))),
            "unacked_restore_throttle": 1,
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
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
    check_broker(settings)
    app = client(settings)
    try:
        return [
            app.send_task(ENCODE_TASK, args=[list(item_ids[i : i + size])], queue=settings.queue).id
            for i in range(0, len(item_ids), size)
        ]
    except OperationalError as exc:
        raise BrokerUnavailable(f"the broker at {settings.redis_url} failed while queueing ({exc})") from exc


def task_for(kind: str) -> str:
    """The Celery task that runs a job of this kind."""
    if kind.startswith("finetune:") or kind == "train":
        return TRAIN_TASK
    tasks = {"reindex": REINDEX_TASK, "eval": EVAL_TASK, "backfill": BACKFILL_TASK}
    if kind not in tasks:
        raise ValueError(f"no task runs jobs of kind {kind!r}")
    return tasks[kind]


def submit_job(settings: Settings, kind: str, params: dict | None = None, *, need_worker: bool = True) -> str:
    """Commit the job row first (the database is the source of truth), then enqueue its task; the job id.
    Raises BrokerUnavailable, or NoWorker (before anything is stored) when no worker would run it."""
    task = task_for(kind)
    check_broker(settings)
    if need_worker and not workers_alive(settings):
        raise NoWorker(no_worker_message(settings))
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, kind, params).id
    try:
        client(settings).send_task(task, args=[job_id], queue=settings.queue)
    except OperationalError as exc:
        with session_scope(settings.resolved_database_url) as session:
            catalogue.update_job(session, job_id, state="failed", error=f"not queued: the broker failed ({exc})")
        raise BrokerUnavailable(f"the broker at {settings.redis_url} failed while queueing ({exc})") from exc
    return job_id


def workers_alive(settings: Settings, timeout: float = 1.0) -> int:
    """How many workers consume this instance's queue and answer (0 when the broker itself is down). Workers
    of other instances on the same broker answer the broadcast too; only those on our queue count."""
    try:
        check_broker(settings)
    except BrokerUnavailable:
        return 0
    app = client(settings)
    # a connection of its own: a pooled one the broker dropped when it restarted would fail the broadcast
    try:
        with app.connection_for_write() as connection:
            replies = app.control.inspect(timeout=timeout, connection=connection).active_queues() or {}
    except (redis.RedisError, OSError, OperationalError):
        return 0
    return sum(any(q.get("name") == settings.queue for q in queues) for queues in replies.values())
