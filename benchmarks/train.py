"""`mmrecall bench train --dataset DIR`: how fast G trains, as `mmrecall train` trains it.

One run, on one set of cached features (the encoder's vectors of the dataset's items):
- this CPU's float32 matmul peak (the arithmetic limit G's MLP runs against);
- G fitted with the default settings, and with fewer, larger steps (batch 1024, lr 2e-3, an MLP 256 wide), each
  until held-out hitRate@50 stops improving: wall time, epochs, seconds per epoch, the best held-out
  hitRate@50, and G's MLP work per second of training (forward and backward, from the distinct items each
  step runs through G) against the peak.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from mmrecall.benchmarks.common import table, write_result
from mmrecall.core.dataset import by_user_in_time, load_dataset
from mmrecall.encoders.dataset import encode_dataset
from mmrecall.finetune.g_train import GTrainConfig, GTrainer, Interactions, make_config

# the settings compared: the defaults, and fewer, larger steps with a narrower G
SETTINGS = {
    "default": ({}, {}),
    "batch 1024, lr 2e-3, hidden 256": ({"batch_size": 1024, "lr": 2e-3}, {"hidden": 256}),
}


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Float32 GFLOP/s of a square matmul on this machine's torch threads (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def run(out: Path, dataset: Path | None = None, encoder: str | None = None, user_tower: str = "pool", **_kw) -> dict:
    if dataset is None:
        raise ValueError("bench train needs --dataset DIR (a dataset in the interchange format)")
    encoder = encoder or "text-minilm"
    data = load_dataset(dataset)
    started = time.time()
    features = encode_dataset(data, encoder, cache=out / "cache")
    encode_s = time.time() - started
    users, items, times, weights, _ = by_user_in_time(data)
    interactions = Interactions(users, items, weights, times, data.negative_users, data.negative_items)
    peak = matmul_peak_gflops()
    result: dict = {
        "dataset": str(dataset),
        "encoder": encoder,
        "user_tower": user_tower,
        "features_s": round(encode_s, 1),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak, 1),
        "rows": [],
    }
    for name, (train_overrides, model_overrides) in SETTINGS.items():
        train = replace(GTrainConfig(), **train_overrides)
        config = make_config(features, (encoder,), user_tower=user_tower, **model_overrides)
        trainer = GTrainer(config, features, [i.id for i in data.items], data.user_ids, train)
        report = trainer.fit(interactions)
        epochs = len(report["epochs"])
        result["rows"].append(
            {
                "settings": name,
                "batch": train.batch_size,
                "lr": train.lr,
                "hidden": config.hidden,
                "fit_s": report["seconds"],
                "epochs": epochs,
                "s_per_epoch": round(report["seconds"] / epochs, 1),
                "best_epoch": report["best_epoch"],
                "valid_hitrate@50": round(report["valid_hitrate@50"], 4),
                "g_gflops": round(report["g_gflop"] / report["seconds"], 1),
                "of_peak": round(report["g_gflop"] / report["seconds"] / peak, 3),
                "curve": [round(e["valid_hitrate@50"], 4) for e in report["epochs"]],
            }
        )
    base = result["rows"][0]["fit_s"]
    for row in result["rows"]:
        row["speedup"] = round(base / row["fit_s"], 2)
    print(f"features: {encode_s:.0f} s; float32 matmul peak {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    columns = ["settings", "batch", "lr", "hidden", "fit_s", "epochs", "s_per_epoch", "best_epoch", "valid_hitrate@50"]
    print(table(result["rows"], [*columns, "g_gflops", "of_peak", "speedup"]))
    write_result(out, "train", result)
    return result
