"""The reconcile sweep: the database is the source of truth, the broker only a hint.

Items are committed before their task is sent, so a lost task (a worker killed mid-batch, a broker
restarted without its data) leaves an item `pending` or `encoding` in the catalogue. The sweep sends
such items again once nothing has touched them for `reconcile_after_s` and the queue has drained
(items still waiting in a backlog are not stale). A job that stopped making progress (its worker was
lost) is sent again up to `job_attempts` runs when its kind can go on from where it was, else failed.
Encoding is idempotent, so a second delivery writes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import client, enqueue_encode, task_for
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

log = logging.getLogger(__name__)
# jobs a lost worker's successor runs again, each going on from what its earlier runs kept: a training
# from its finished steps and last whole epoch (pipeline.training), a backfill from the vectors it stored
RESUMABLE = ("train", "reindex", "backfill")


def queue_length(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url, socket_timeout=5).llen(settings.queue))


def reconcile(settings: Settings, *, now: float | None = None) -> dict[str, int]:
    """One sweep: {"requeued": items sent again, "jobs_resent": stale jobs sent again, "jobs_failed": stale
    jobs marked failed}."""
    now = time.time() if now is None else now
    url = settings.resolved_database_url
    idle = queue_length(settings) == 0
    resent: list[tuple[str, str]] = []
    reason = f"no progress for {settings.job_stale_after_s:.0f}s: its worker was lost (marked by reconcile)"
    with session_scope(url) as session:
        failed = []
        for job in catalogue.stale_jobs(session, now - settings.job_stale_after_s):
            attempt = int((job.params or {}).get("attempt", 1))
            # a running job no worker claimed runs in a CLI's or a harness's process: never sent to a worker
            by_worker = job.state == "queued" or "worker" in (job.params or {})
            if job.kind not in RESUMABLE or attempt >= settings.job_attempts or not by_worker:
                failed.append(job.id)
                suffix = f" in run {attempt} of {settings.job_attempts}" if job.kind in RESUMABLE else ""
                catalogue.fail_jobs(session, [job.id], reason + suffix)
            elif job.state == "running" or idle:  # (a queued one behind a backlog is on its way)
                catalogue.requeue_job(session, job)  # committed before its task is sent, as items are
                resent.append((job.id, job.kind))
    for job_id, kind in resent:
        client(settings).send_task(task_for(kind), args=[job_id], queue=settings.queue)
    requeued: list[str] = []
    if idle:
        with session_scope(url) as session:
            requeued = catalogue.stale_items(session, now - settings.reconcile_after_s)
            catalogue.touch_items(session, requeued)  # committed before the tasks are sent
        if requeued:
            enqueue_encode(settings, requeued)
    if requeued or failed or resent:
        log.warning(
            "reconcile: %d stale items sent again, %d stale jobs sent again, %d failed",
            len(requeued),
            len(resent),
            len(failed),
        )
    return {"requeued": len(requeued), "jobs_resent": len(resent), "jobs_failed": len(failed)}


class ReconcileLoop:
    """Runs the sweep every `reconcile_every_s` in a worker; a Redis lock lets one worker sweep at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def start(self) -> ReconcileLoop:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        every = max(0.2, self.settings.reconcile_every_s)
        while True:
            try:
                lock = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
                if lock.set(f"mmrecall:reconcile:{self.settings.queue}", "1", nx=True, px=int(every * 900)):
                    reconcile(self.settings)
            except Exception:  # the broker or the database may be down right now: try again next round
                log.warning("reconcile sweep failed; retrying in %.0fs", every, exc_info=True)
            if self._stop.wait(every):
                return
