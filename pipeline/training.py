"""Training jobs by kind: the same call from the CLI (in process) and from the Celery task."""

from __future__ import annotations

from pathlib import Path

from mmrecall.core.settings import Settings
from mmrecall.finetune.common import Progress
from mmrecall.finetune.dual_stream import pretrain_dual_stream
from mmrecall.finetune.g_job import DEFAULT_FEATURES, train_g
from mmrecall.finetune.g_train import GTrainConfig
from mmrecall.finetune.tag_image import train_tag_image
from mmrecall.pipeline.jobs import run_job
from mmrecall.pipeline.train import train_from_catalogue

KINDS = ("tag-image", "pretrain-dualstream", "g")


def run_training(settings: Settings, kind: str, params: dict, on_progress: Progress | None = None) -> dict:
    dataset = Path(params["dataset"])
    out_root = settings.home / "checkpoints"
    cache = settings.home / "train-cache"
    if kind == "tag-image":
        return train_tag_image(
            dataset,
            base=params.get("base", "tag-image-effnet"),
            tag_level=int(params.get("tag_level", 2)),
            epochs=int(params.get("epochs", 200)),
            min_count=int(params.get("min_count", 10)),
            out_root=out_root,
            cache=cache,
            progress=on_progress is None,
            on_progress=on_progress,
        )
    if kind == "pretrain-dualstream":
        return pretrain_dual_stream(
            dataset,
            base=params.get("base", "dual-stream-base"),
            epochs=float(params.get("epochs", 2.0)),
            steps=params.get("steps"),
            batch_size=int(params.get("batch_size", 64)),
            resume=Path(params["resume"]) if params.get("resume") else None,
            out_root=out_root,
            cache=cache,
            progress=on_progress is None,
            on_progress=on_progress,
        )
    if kind == "g":
        train = GTrainConfig(
            **{k: params[k] for k in ("epochs", "batch_size", "log_q", "hard_negatives") if k in params}
        )
        return train_g(
            dataset,
            features=tuple(params.get("features") or DEFAULT_FEATURES),
            out_root=out_root,
            cache=cache,
            train=train,
            progress=on_progress is None,
            on_progress=on_progress,
            **{k: params[k] for k in ("user_tower", "interests", "history") if k in params},
        )
    raise ValueError(f"unknown training kind {kind!r}; known: {', '.join(KINDS)}")


def training_job(settings: Settings, job_id: str) -> dict:
    """The Celery side: parameters from the job row, progress onto it, the report into its result."""

    def work(job, report) -> dict:
        def progress(done: int, total: int, metrics: dict) -> None:
            report(done, total, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))

        if job.kind == "train":  # from the catalogue, then activated
            return train_from_catalogue(settings, job_id, dict(job.params), report)
        return run_training(settings, job.kind.removeprefix("finetune:"), dict(job.params), on_progress=progress)

    return run_job(settings, job_id, work)
