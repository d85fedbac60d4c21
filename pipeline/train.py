"""Training from the catalogue (`mmrecall train`, POST /v1/train, the train job): G learns from the items
and interactions the service holds, then serves: the catalogue is re-encoded with it, reindexed (its user
tower goes into the snapshot) and swapped in. Until the swap the previous model keeps serving; a failed or
interrupted training leaves it in place."""

from __future__ import annotations

import time
from pathlib import Path

from mmrecall.core.settings import Settings
from mmrecall.encoders.content_g import CONFIG_FILE as G_CONFIG_FILE
from mmrecall.encoders.content_g import GConfig
from mmrecall.finetune.g_job import train_g
from mmrecall.finetune.g_train import GTrainConfig
from mmrecall.pipeline.encode import encoder_specs
from mmrecall.pipeline.jobs import Report
from mmrecall.pipeline.reindex import backfill
from mmrecall.storage.export import export_catalogue

TRAIN_PARAMS = ("epochs", "batch_size", "log_q", "hard_negatives")
MODEL_PARAMS = ("user_tower", "interests", "history")


def train_from_catalogue(settings: Settings, job_id: str, params: dict, report: Report | None = None) -> dict:
    """Export the catalogue, train G on it (features: `params["features"]`, default the active encoder),
    then activate it unless `params["activate"]` is false. The result: G's validation figures, the
    checkpoint, and the activation's reindex."""
    started = time.time()
    run = settings.home / "train" / time.strftime("%Y%m%dT%H%M%S", time.gmtime()) / job_id[:8]
    exported = export_catalogue(settings.resolved_database_url, run / "dataset")
    if not exported["interactions"]:
        raise ValueError("the catalogue holds no interactions with ready items: nothing to learn from")
    if report:
        report(0, 1, f"training G on {exported['items']} items, {exported['interactions']} interactions")
    features = tuple(params.get("features") or _base_features(settings))

    def progress(done: int, total: int, metrics: dict) -> None:
        if report:
            report(done, total, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))

    trained = train_g(
        run / "dataset",
        features=features,
        out_root=settings.home / "checkpoints",
        cache=settings.home / "train-cache",
        train=GTrainConfig(**{k: params[k] for k in TRAIN_PARAMS if k in params}),
        progress=report is None,
        on_progress=progress,
        **{k: params[k] for k in MODEL_PARAMS if k in params},
    )
    result = {**exported, **trained, "features": list(features), "train_s": round(time.time() - started, 1)}
    if params.get("activate", True):
        if report:
            report(0, exported["items"], f"activating {trained['checkpoint']}: re-encode, reindex, swap")
        activated = backfill(settings, job_id, trained["checkpoint"])
        result |= {"snapshot": activated["snapshot"], "encoder_version": activated["encoder_version"]}
    result["seconds"] = round(time.time() - started, 1)
    return result


def _base_features(settings: Settings) -> tuple[str, ...]:
    """G's input features: the active encoder, or, when a G is active already, the features it was trained on."""
    active = encoder_specs(settings)[0]
    config = Path(active) / G_CONFIG_FILE
    if config.is_file():
        return tuple(GConfig.from_json(config.read_text()).feature_encoders)
    return (active,)
