"""Batch jobs: start a reindex, follow any job's progress."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException

from mmrecall.api.auth import READ, WRITE
from mmrecall.api.deps import SessionDep, SettingsDep
from mmrecall.api.media import confine
from mmrecall.api.schemas import ERRORS, ActivateIn, EvalIn, JobCreated, JobOut, TrainIn
from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import no_worker_message, submit_job, workers_alive
from mmrecall.storage import catalogue

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERRORS)


@cache
def registered_encoders() -> list[str]:
    """Names in encoders/configs, found without importing `mmrecall.encoders` (that would load torch here)."""
    spec = importlib.util.find_spec("mmrecall.encoders")
    folders = [Path(p) / "configs" for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(path.stem for folder in folders for path in folder.glob("*.json"))


@router.post("/reindex", status_code=202, response_model=JobCreated, dependencies=[WRITE])
def post_reindex(settings: SettingsDep) -> JobCreated:
    return queued(settings, "reindex")


@router.post("/eval", status_code=202, response_model=JobCreated, dependencies=[WRITE])
def post_eval(body: EvalIn, settings: SettingsDep) -> JobCreated:
    """Run `mmrecall eval` on a worker; the report lands in the job's `result`."""
    params = body.model_dump()
    params["dataset"] = confine(body.dataset, settings.media_roots)
    return queued(settings, "eval", params)


@router.post("/train", status_code=202, response_model=JobCreated, dependencies=[WRITE])
def post_train(body: TrainIn, settings: SettingsDep) -> JobCreated:
    """Train G from the catalogue on a worker, then serve it (re-encode, reindex, swap); the job's result
    holds G's validation figures. The previous model serves until the swap, and on failure."""
    known = registered_encoders()
    for spec in body.features or ():
        if spec not in known and not (Path(spec) / "encoder.json").is_file():
            raise HTTPException(400, f"unknown encoder {spec!r} in features; known: {known} or a checkpoint directory")
    return queued(settings, "train", body.model_dump(exclude_none=True))


@router.post("/encoders/activate", status_code=202, response_model=JobCreated, dependencies=[WRITE])
def activate_encoder(body: ActivateIn, settings: SettingsDep) -> JobCreated:
    """Re-encode the catalogue with another encoder, rebuild the index from it, then swap; queries keep
    the old vectors until the swap."""
    known = registered_encoders()
    if body.encoder not in known and not (Path(body.encoder) / "encoder.json").is_file():
        raise HTTPException(400, f"unknown encoder {body.encoder!r}; known: {known} or a checkpoint directory")
    return queued(settings, "backfill", {"encoder": body.encoder})


def queued(settings: Settings, kind: str, params: dict | None = None) -> JobCreated:
    """Queue a job (503 when the broker is down); it says so when no worker answers to run it yet."""
    alive = workers_alive(settings)  # asked first: a solo worker that takes the job stops answering pings
    job_id = submit_job(settings, kind, params, need_worker=False)
    warning = None if alive else no_worker_message(settings) + "; the job starts when one does"
    return JobCreated(job_id=job_id, state="queued", warning=warning)


@router.get("/encoders", dependencies=[READ])
def encoders_state(session: SessionDep, settings: SettingsDep) -> dict:
    state = catalogue.encoder_state(session)
    return {
        "registered": registered_encoders(),
        "active": state.get("active", settings.encoder),
        "pending": state.get("pending"),
    }


@router.get("/jobs/{job_id}", response_model=JobOut, dependencies=[READ])
def get_job(job_id: str, session: SessionDep) -> JobOut:
    job = catalogue.get_job(session, job_id)
    if job is None:
        raise HTTPException(404, f"unknown job id {job_id!r}")
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        done=job.done,
        total=job.total,
        progress=(job.done / job.total) if job.total else (1.0 if job.state == "succeeded" else 0.0),
        message=job.message,
        error=job.error,
        result=job.result,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )
