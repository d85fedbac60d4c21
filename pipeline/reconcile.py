"""The reconcile sweep: the database is the source of truth, the broker only a hint.

Items are committed before their task is sent, so a lost task (a worker killed mid-batch, a broker
restarted without its data) leaves an item `pending` or `encoding` in the catalogue. The sweep sends
such items again once nothing has touched them for `reconcile_after_s` and the queue has drained
(items still waiting in a backlog are not stale), and fails jobs that stopped making progress.
Encoding is idempotent, so a second delivery writes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import enqueue_encode
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

log = logging.getLogger(__name__)


def queue_length(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url, socket_timeout=5).llen(settings.queue))


def reconcile(settings: Settings, *, now: float | None = None) -> dict[str, int]:
    """One sweep: {"requeued": items sent again, "jobs_failed": stale jobs marked failed}."""
    now = time.time() if now is None else now
    url = settings.resolved_database_url
    with session_scope(url) as session:
        jobs = catalogue.fail_stale_jobs(
            session,
            now - settings.job_stale_after_s,
            f"no progress for {settings.job_stale_after_s:.0f}s: its worker was lost (marked by reconcile)",
        )
    requeued: list[str] = []
    if queue_length(settings) == 0:
        with session_scope(url) as session:
            requeued = catalogue.stale_items(session, now - settings.reconcile_after_s)
            catalogue.touch_items(session, requeued)  # committed before the tasks are sent
        if requeued:
            enqueue_encode(settings, requeued)
    if requeued or jobs:
        log.warning("reconcile: %d stale items sent again, %d stale jobs failed", len(requeued), len(jobs))
    return {"requeued": len(requeued), "jobs_failed": len(jobs)}


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
