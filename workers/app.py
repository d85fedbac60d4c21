"""The Celery app workers run: `celery -A mmrecall.workers.app worker` (or `mmrecall worker`)."""

from __future__ import annotations

import os

import torch
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from mmrecall.core.settings import get_settings
from mmrecall.pipeline.queue import make_celery
from mmrecall.pipeline.reconcile import ReconcileLoop

settings = get_settings()
app = make_celery(settings)
# the evaluation job is defined beside the harness (a shared task): workers never import evaluation
app.conf.include = ["mmrecall.workers.tasks", "mmrecall.evaluation.tasks"]


@worker_init.connect
def _lower_priority(**_kwargs) -> None:
    """Before the pool starts (its processes inherit it): the scheduler gives workers what the API leaves.
    With both on 2 cores, reads' p99 doubled while a training and reindexes ran (bench soak)."""
    if settings.worker_nice > 0:
        os.nice(settings.worker_nice)


@worker_process_init.connect
def _set_threads(**_kwargs) -> None:
    # One process per core with one thread each beats one process with many threads for small batches.
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


_reconcile = None


@worker_ready.connect
def _start_reconcile(**_kwargs) -> None:
    """Sweep at start-up (items a previous worker or broker lost) and then on a timer."""
    global _reconcile
    _reconcile = ReconcileLoop(settings).start()


@worker_shutdown.connect
def _stop_reconcile(**_kwargs) -> None:
    if _reconcile is not None:
        _reconcile.stop()
