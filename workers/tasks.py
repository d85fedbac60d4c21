"""Thin Celery tasks: take ids, call a pipeline function, report. The logic lives in `mmrecall.pipeline`."""

from __future__ import annotations

import logging
import os
import socket

from mmrecall.core.settings import get_settings
from mmrecall.pipeline import encode
from mmrecall.pipeline.isolated import JobProcessError, run_isolated
from mmrecall.pipeline.jobs import heartbeat
from mmrecall.pipeline.queue import BACKFILL_TASK, ENCODE_TASK, REINDEX_TASK, SCHEDULED_TRAIN_TASK, TRAIN_TASK
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.workers.app import app

log = logging.getLogger(__name__)


# Acknowledged after it ran: a worker killed mid-batch leaves the message to be delivered again (and
# the reconcile sweep catches what the broker loses). Encoding is idempotent, so that is safe. Jobs keep
# early acks: a redelivered hour-long reindex would run twice; reconcile sends a lost job again.
@app.task(name=ENCODE_TASK, acks_late=True, reject_on_worker_lost=True)
def encode_items(item_ids: list[str]) -> dict[str, int]:
    return encode.encode_items(get_settings(), item_ids)


def _job_in_child(job_id: str, target: str, *args: str) -> dict:
    """A job's work (pipeline/isolated.py) in a process of its own while this worker keeps its row's
    heartbeat: the job's memory goes back to the system when it ends. The work records its own result or
    error on the row; a child that died without one (killed, out of memory) fails the row here."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        if not catalogue.claim_job(session, job_id, f"{socket.gethostname()}:{os.getpid()}"):
            log.warning("job %s is not queued (a second delivery, or it ended meanwhile): not run again", job_id)
            return {"skipped": "not queued"}
    try:
        with heartbeat(settings, job_id):
            return run_isolated(target, job_id, *args)
    except JobProcessError as exc:
        with session_scope(settings.resolved_database_url) as session:
            catalogue.fail_jobs(session, [job_id], str(exc))
        raise


@app.task(name=REINDEX_TASK)
def reindex(job_id: str) -> dict:
    return _job_in_child(job_id, "mmrecall.pipeline.reindex:reindex")


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> dict:
    return _job_in_child(job_id, "mmrecall.pipeline.training:training_job")


@app.task(name=SCHEDULED_TRAIN_TASK)
def scheduled_train() -> dict:
    """The beat's retraining: a train job row, then the training (skipped while one is under way)."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        if any(job.kind == "train" and job.state in ("queued", "running") for job in catalogue.recent_jobs(session)):
            return {"skipped": "a training is under way"}
        job_id = catalogue.create_job(session, "train", {"scheduled": True}).id
    return _job_in_child(job_id, "mmrecall.pipeline.training:training_job")


@app.task(name=BACKFILL_TASK)
def backfill(job_id: str) -> dict:
    return _job_in_child(job_id, "mmrecall.pipeline.reindex:backfill_job")
