"""Training jobs by kind: the same call from the CLI (in process) and from the Celery task, and training
from the catalogue (`mmrecall train`, POST /v1/train, the scheduled retraining)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmrecall.core.atomic import write_atomically
from mmrecall.core.dataset import load_dataset
from mmrecall.core.settings import Settings
from mmrecall.encoders import encoder_version
from mmrecall.encoders.content_g import CONFIG_FILE as G_CONFIG_FILE
from mmrecall.encoders.content_g import GConfig
from mmrecall.encoders.dataset import cached_vectors_path
from mmrecall.finetune.common import Progress
from mmrecall.finetune.dual_stream import pretrain_dual_stream
from mmrecall.finetune.g_job import DEFAULT_FEATURES, train_g
from mmrecall.finetune.g_train import GTrainConfig
from mmrecall.finetune.sasrec import DROPOUTS, SASRecConfig, train_sequential
from mmrecall.finetune.tag_image import train_tag_image
from mmrecall.pipeline.encode import encoder_specs
from mmrecall.pipeline.jobs import Report, run_job
from mmrecall.pipeline.reindex import backfill
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.storage.export import export_catalogue

log = logging.getLogger(__name__)
KINDS = ("tag-image", "pretrain-dualstream", "g")
# G's user towers: `user_tower: "both"` trains one G with each and serves the one that validates better
USER_TOWERS = ("pool", "seq")
# feature encoders `mmrecall train --pretrain` can train before G: name -> (training kind, its checkpoints' folder)
PRETRAIN = {"tag-image": ("tag-image", "tag-image"), "dual-stream": ("pretrain-dualstream", "dual-stream")}


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
            **{
                k: params[k]
                for k in ("epochs", "patience", "batch_size", "lr", "log_q", "hard_negatives", "disliked_rate", "seed")
                if k in params
            }
        )
        return train_g(
            dataset,
            features=tuple(params.get("features") or DEFAULT_FEATURES),
            out_root=out_root,
            cache=cache,
            train=train,
            progress=on_progress is None,
            on_progress=on_progress,
            events=settings.event_rules,
            resume=Path(params["resume"]) if params.get("resume") else None,
            **{k: params[k] for k in ("user_tower", "interests", "history", "hidden") if k in params},
        )
    raise ValueError(f"unknown training kind {kind!r}; known: {', '.join(KINDS)}")


def train_from_catalogue(settings: Settings, job_id: str, params: dict, report: Report | None = None) -> dict:
    """`mmrecall train`: export the catalogue, train G on it (the "g" kind above; features: the active
    encoder unless named, plus the feature encoders `params["pretrain"]` names, trained first on the same
    export with `params["pretrain_params"][name]`; `params["user_tower"]` "both": one G per user tower, the
    better on held-out interactions served), and with `params["sequential"]` the sequential channel's
    SASRec beside it; then activate it unless `params["activate"]` is false: re-encode, reindex, swap.
    Until the swap the previous model keeps serving, and it stays when the training fails."""
    started = time.time()
    run = training_run(settings, job_id)
    exported = stage(run, "export", export_catalogue, settings.resolved_database_url, run / "dataset")
    if not exported["interactions"]:
        raise ValueError("the catalogue holds no interactions with ready items: nothing to learn from")
    features = list(params.get("features") or _base_features(settings))
    for spec in features:
        workers_vectors_as_features(settings, run / "dataset", spec)
    pretrained = {}
    for name in params.get("pretrain") or ():
        if name not in PRETRAIN:
            raise ValueError(f"unknown feature encoder to pretrain {name!r}; known: {', '.join(PRETRAIN)}")
        kind, folder = PRETRAIN[name]
        if report:
            report(0, 1, f"training the {name} encoder on {exported['items']} items before G")
        options = {**(params.get("pretrain_params") or {}).get(name, {}), "dataset": str(run / "dataset")}
        on_progress = metrics_reporter(report) if report else None
        done = stage(run, f"pretrain-{name}", run_training, settings, kind, options, on_progress=on_progress)
        pretrained[name] = done["checkpoint"]
        features = with_feature(features, done["checkpoint"], settings.home / "checkpoints" / folder)
    towers = USER_TOWERS if params.get("user_tower") == "both" else (params.get("user_tower"),)
    by_tower, on_progress = {}, metrics_reporter(report) if report else None
    for tower in towers:
        if report:
            what = f"G with the {tower} user tower" if len(towers) > 1 else "G"
            report(0, 1, f"training {what} on {exported['items']} items, {exported['interactions']} interactions")
        g_params = {**params, "dataset": str(run / "dataset"), "features": features, "user_tower": tower}
        if tower is None:
            del g_params["user_tower"]
        name = f"g-{tower or 'default'}"
        g_params["resume"] = str(run / f"{name}.resume.pt")
        by_tower[tower] = stage(run, name, run_training, settings, "g", g_params, on_progress=on_progress)
        Path(g_params["resume"]).unlink(missing_ok=True)  # its epoch state: the checkpoint holds what serves
    # both towers: the one with the better held-out hitRate@50 serves (the other's checkpoint stays on disk)
    served = max(by_tower, key=lambda tower: by_tower[tower]["valid_hitrate@50"])
    trained = by_tower[served]
    result = {**exported, **trained, "features": features}
    if len(towers) > 1:
        result["user_tower"] = served
        result["user_towers"] = {
            tower: {"valid_hitrate@50": r["valid_hitrate@50"], "checkpoint": r["checkpoint"]}
            for tower, r in by_tower.items()
        }
    if params.get("sequential"):
        if report:
            report(0, 1, f"training the sequential channel (SASRec) on {exported['interactions']} interactions")
        result["sequential"] = stage(
            run, "sequential", sequential_model, run / "dataset", Path(trained["checkpoint"]), params
        )
    result["train_s"] = round(time.time() - started, 1)
    if pretrained:
        result["pretrained"] = pretrained
    if params.get("activate", True):
        if report:
            report(0, exported["items"], f"activating {trained['checkpoint']}: re-encode, reindex, swap")
        activated = backfill(settings, job_id, trained["checkpoint"])
        result |= {k: activated[k] for k in ("snapshot", "encoder_version", "encoded", "encoded_from_stored_vectors")}
    result["seconds"] = round(time.time() - started, 1)
    return result


def training_run(settings: Settings, job_id: str) -> Path:
    """The job's working folder: the one an earlier attempt of this job made (its worker was lost and
    reconcile sent the job again), else a new one named by the start time."""
    earlier = sorted((settings.home / "train").glob(f"*/{job_id[:8]}"))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run = earlier[-1] if earlier else settings.home / "train" / stamp / job_id[:8]
    run.mkdir(parents=True, exist_ok=True)
    return run


def stage(run: Path, name: str, work: Callable[..., dict], *args, **kwargs) -> dict:
    """A step of a training job, done once: its result is kept in the run folder, so an attempt that
    resumes the job reads it instead of doing the step again."""
    done = run / f"{name}.done.json"
    if done.is_file():
        log.info("%s: done by an earlier attempt (%s)", name, done)
        return json.loads(done.read_text())
    result = work(*args, **kwargs)
    write_atomically(done, lambda partial: partial.write_text(json.dumps(result, default=str)))
    return result


def workers_vectors_as_features(settings: Settings, dataset: Path, spec: str) -> bool:
    """G reads the vectors the workers stored for the exported items from an encoder, when every item has
    one under the version G's feature encoding would compute: put where `encode_dataset` looks first, they
    spare the job encoding the catalogue again (minutes at 100k items). False: G's encoding computes them."""
    data = load_dataset(dataset)
    path = cached_vectors_path(data, spec, settings.home / "train-cache")
    if path.is_file():
        return True
    rows = {item.id: row for row, item in enumerate(data.items)}
    matrix: np.ndarray | None = None
    found = 0
    with session_scope(settings.resolved_database_url) as session:
        for ids, chunk, _ in catalogue.iter_vectors(session, encoder_version(spec)):
            if matrix is None:
                matrix = np.zeros((len(rows), chunk.shape[1]), np.float32)
            for item_id, vector in zip(ids, chunk, strict=True):
                if (row := rows.get(item_id)) is not None:
                    matrix[row], found = vector, found + 1
    if matrix is None or found < len(rows):
        return False
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda partial: np.save(partial, matrix))
    log.info("G's %s features: the %d vectors the workers stored", spec, found)
    return True


def sequential_model(dataset: Path, checkpoint: Path, params: dict) -> dict:
    """SASRec beside G, in G's checkpoint (the reindex puts it into the snapshot). Not retrained on the
    held-out items by default: the reindex tunes the merge on G's held-out interactions, which the model
    must not have seen, or the tuning would trust it for remembering them."""
    options = {"retrain": False, **(params.get("sequential_params") or {})}
    dropouts = (float(options.pop("dropout")),) if "dropout" in options else DROPOUTS
    return train_sequential(dataset, checkpoint, config=SASRecConfig(**options), dropouts=dropouts)


def with_feature(features: list[str], checkpoint: str, folder: Path) -> list[str]:
    """G's features with a newly trained encoder: it replaces an earlier checkpoint from the same folder (a
    retraining does not stack one tag-image vector per run), else it is added."""
    kept = [f for f in features if not Path(f).resolve().is_relative_to(folder.resolve())]
    return [*kept, checkpoint]


def _base_features(settings: Settings) -> tuple[str, ...]:
    """G's input features: the active encoder, or, when a G is active already, the features it was trained on."""
    active = encoder_specs(settings)[0]
    config = Path(active) / G_CONFIG_FILE
    if config.is_file():
        return tuple(GConfig.from_json(config.read_text()).feature_encoders)
    return (active,)


def metrics_reporter(report: Report) -> Progress:
    """A trainer's (done, total, metrics) progress onto a job row's (done, total, message)."""

    def progress(done: int, total: int, metrics: dict) -> None:
        report(done, total, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))

    return progress


def training_job(settings: Settings, job_id: str) -> dict:
    """The Celery side: parameters from the job row, progress onto it, the report into its result."""

    def work(job, report) -> dict:
        if job.kind == "train":  # from the catalogue, then activated
            return train_from_catalogue(settings, job_id, dict(job.params), report)
        kind = job.kind.removeprefix("finetune:")
        return run_training(settings, kind, dict(job.params), on_progress=metrics_reporter(report))

    return run_job(settings, job_id, work)
