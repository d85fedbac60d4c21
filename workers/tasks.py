"""Thin Celery tasks: take ids, call a pipeline function, report. The logic lives in `mmrecall.pipeline`."""

from __future__ import annotations

from mmrecall.core.settings import get_settings
from mmrecall.pipeline import encode
from mmrecall.pipeline import reindex as reindexing
from mmrecall.pipeline.jobs import heartbeat
from mmrecall.pipeline.queue import BACKFILL_TASK, ENCODE_TASK, REINDEX_TASK, SCHEDULED_TRAIN_TASK, TRAIN_TASK
from mmrecall.pipeline.training import training_job
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.workers.app import app


# Acknowledged after it ran: a worker killed mid-batch leaves the message to be delivered again (and
# the reconcile sweep catches what the broker loses). Encoding is idempotent, so that is safe. Jobs keep
# early acks: a redelivered hour-long reindex would run twice; a lost job is failed by reconcile.
@app.task(name=ENCODE_TASK, acks_late=True, reject_on_worker_lost=True)
def encode_items(item_ids: list[str]) -> dict[str, int]:
    return encode.encode_items(get_settings(), item_ids)


@app.task(name=REINDEX_TASK)
def reindex(job_id: str) -> dict:
    settings = get_settings()
    try:
        with heartbeat(settings, job_id):
            return reindexing.reindex(settings, job_id)
    except Exception as exc:
        with session_scope(settings.resolved_database_url) as session:
            catalogue.update_job(session, job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> dict:
    with heartbeat(get_settings(), job_id):
        return training_job(get_settings(), job_id)  # records its own failure on the job row


@app.task(name=SCHEDULED_TRAIN_TASK)
def scheduled_train() -> dict:
    """The beat's retraining: a train job row, then the training here (skipped while one is under way)."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        if any(job.kind == "train" and job.state in ("queued", "running") for job in catalogue.recent_jobs(session)):
            return {"skipped": "a training is under way"}
        job_id = catalogue.create_job(session, "train", {"scheduled": True}).id
    with heartbeat(settings, job_id):
        return training_job(settings, job_id)


@app.task(name=BACKFILL_TASK)
def backfill(job_id: str) -> dict:
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        spec = catalogue.get_job(session, job_id).params["encoder"]
    with heartbeat(settings, job_id):
        return reindexing.backfill(settings, job_id, spec)  # records its own failure on the job row
