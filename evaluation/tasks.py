"""`mmrecall eval --on-worker` as a Celery job. A shared task: the worker's app loads this module by
name (`mmrecall.workers.app`'s include list), so the workers never import the evaluation layer."""

from __future__ import annotations

import json
from pathlib import Path

from celery import shared_task

from mmrecall.core.settings import Settings, get_settings
from mmrecall.evaluation.harness import plot_report, run_eval
from mmrecall.evaluation.registry import BASELINES
from mmrecall.pipeline.jobs import heartbeat, run_job
from mmrecall.pipeline.queue import EVAL_TASK


def evaluate(settings: Settings, job_id: str) -> dict:
    """Run `mmrecall eval` as a job: parameters from the job row, progress onto it, report into it."""

    def work(job, report) -> dict:
        params = dict(job.params)
        result = run_eval(
            Path(params["dataset"]),
            channels=params.get("channels"),
            protocol=params.get("protocol", "both"),
            split=params.get("split", "test"),
            cache=Path(params["cache"]) if params.get("cache") else settings.home / "eval-cache",
            encoder=params.get("encoder") or settings.encoder,
            baselines=params["baselines"] if params.get("baselines") is not None else BASELINES,
            quick=bool(params.get("quick")),
            progress=False,
            on_progress=lambda step, done, total: report(done, total, step),
        )
        if params.get("out"):
            Path(params["out"]).write_text(json.dumps(result, indent=2))
        if params.get("plot"):
            plot_report(result, Path(params["plot"]))
        return result

    report = run_job(settings, job_id, work)
    return {"job_id": job_id, "channels": list(report["channels"]), "cold": list(report["cold"])}


@shared_task(name=EVAL_TASK)
def evaluate_task(job_id: str) -> dict:
    with heartbeat(get_settings(), job_id):
        return evaluate(get_settings(), job_id)  # records its own failure on the job row
