"""Running a long job against its row in the jobs table: state, progress, result or error."""

from __future__ import annotations

from collections.abc import Callable

from mmrecall.settings import Settings
from storage import catalogue
from storage.db import Job, session_scope

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
