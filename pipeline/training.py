"""Training jobs by kind: the same call from the CLI (in process) and from the Celery task, and training
from the catalogue (`mmrecall train`, POST /v1/train, the scheduled retraining)."""

from __future__ import annotations

import time
from pathlib import Path

from mmrecall.core.settings import Settings
from mmrecall.encoders.content_g import CONFIG_FILE as G_CONFIG_FILE
from mmrecall.encoders.content_g import GConfig
from mmrecall.finetune.common import Progress
from mmrecall.finetune.dual_stream import pretrain_dual_stream
from mmrecall.finetune.g_job import DEFAULT_FEATURES, train_g
from mmrecall.finetune.g_train import GTrainConfig
from mmrecall.finetune.sasrec import DROPOUTS, SASRecConfig, train_sequential
from mmrecall.finetune.tag_image import train_tag_image
from mmrecall.pipeline.encode import encoder_specs
from mmrecall.pipeline.jobs import Report, run_job
from mmrecall.pipeline.reindex import backfill
from mmrecall.storage.export import export_catalogue

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
                for k in ("epochs", "batch_size", "lr", "log_q", "hard_negatives", "disliked_rate", "seed")
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
    run = settings.home / "train" / time.strftime("%Y%m%dT%H%M%S", time.gmtime()) / job_id[:8]
    exported = export_catalogue(settings.resolved_database_url, run / "dataset")
    if not exported["interactions"]:
        raise ValueError("the catalogue holds no interactions with ready items: nothing to learn from")
    features = list(params.get("features") or _base_features(settings))
    pretrained = {}
    for name in params.get("pretrain") or ():
        if name not in PRETRAIN:
            raise ValueError(f"unknown feature encoder to pretrain {name!r}; known: {', '.join(PRETRAIN)}")
        kind, folder = PRETRAIN[name]
        if report:
            report(0, 1, f"training the {name} encoder on {exported['items']} items before G")
        options = {**(params.get("pretrain_params") or {}).get(name, {}), "dataset": str(run / "dataset")}
        done = run_training(settings, kind, options, on_progress=metrics_reporter(report) if report else None)
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
        by_tower[tower] = run_training(settings, "g", g_params, on_progress=on_progress)
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
        result["sequential"] = sequential_model(run / "dataset", Path(trained["checkpoint"]), params)
    result["train_s"] = round(time.time() - started, 1)
    if pretrained:
        result["pretrained"] = pretrained
    if params.get("activate", True):
        if report:
            report(0, exported["items"], f"activating {trained['checkpoint']}: re-encode, reindex, swap")
        activated = backfill(settings, job_id, trained["checkpoint"])
        result |= {"snapshot": activated["snapshot"], "encoder_version": activated["encoder_version"]}
    result["seconds"] = round(time.time() - started, 1)
    return result


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
