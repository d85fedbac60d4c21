"""Running a long job against its row in the jobs table: state, progress, result or error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mmrecall.core.settings import Settings
from mmrecall.storage import catalogue
from mmrecall.storage.db import Job, session_scope

log = logging.getLogger(__name__)

Report = Callable[[int, int, str | None], None]  # (done, total, message)


def run_job(settings: Settings, job_id: str, work: Callable[[Job, Report], dict]) -> dict:
    """Mark the job running, call `work(job, report)`, then store its result, or its error and re-raise."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = catalogue.get_job(session, job_id)
        catalogue.update_job(session, job_id, state="running")

    def report(done: int, total: int, message: str | None = None) -> None:
        with session_scope(url) as session:
            catalogue.update_job(session, job_id, done=done, total=total, message=message)

    try:
        result = work(job, report)
    except Exception as exc:
        with session_scope(url) as session:
            catalogue.update_job(session, job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    with session_scope(url) as session:
        catalogue.update_job(session, job_id, state="succeeded", result=result)
    return result


@contextmanager
def heartbeat(settings: Settings, job_id: str) -> Iterator[None]:
    """Touch the job row while its task runs, so the reconcile sweep tells a long quiet phase (an index
    build, an epoch) from a dead worker: only a job whose heartbeat stopped goes stale."""
    stop = threading.Event()
    every = max(0.2, settings.job_stale_after_s / 4)

    def beat() -> None:
        while not stop.wait(every):
            try:
                with session_scope(settings.resolved_database_url) as session:
                    catalogue.touch_job(session, job_id)
            except Exception:  # the database may blip; the next beat tries again
                log.warning("job %s heartbeat failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
