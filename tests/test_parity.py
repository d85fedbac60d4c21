"""What the harness measures is what the API serves: one snapshot, the same queries, the same answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from mmrecall.core.dataset import cold_items_split, leave_last_out, load_dataset
from mmrecall.core.demo_data import generate_demo
from mmrecall.evaluation.recall_channels import RecallSetChannel
from mmrecall.evaluation.served import build_served, dense_scores
from mmrecall.pipeline.runner import free_port, settings_env, wait_for_api
from mmrecall.recall.channels import CHANNELS
from mmrecall.recall.serving import new_rows


def test_100_queries_get_the_same_ids_over_http_and_in_the_harness(tmp_path: Path) -> None:
    data = load_dataset(generate_demo(tmp_path / "demo", per_leaf=6, users=110))
    split = leave_last_out(data, "test")
    sequential = {"dim": 16, "max_len": 30, "epochs": 6, "eval_every": 3, "batch_size": 32, "dropout": 0.1}
    train = {"epochs": 1, "batch_size": 64, "sequential": True, "sequential_params": sequential}
    served = build_served(data, split, tmp_path / "home", encoder="tiny-test", train=train, progress=False)
    assert served.serving.state.recall and served.serving.state.user_tower is not None  # G serves, tuned
    assert served.serving.state.sequential is not None  # and so does every channel, the sequential one too
    users = [data.user_ids[u] for u in split.query_users[:100]]
    assert len(users) == 100
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--no-access-log"],
        env=settings_env(served.settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_api(url, timeout=90)
        compared = 0
        with httpx.Client(base_url=url, timeout=60) as http:
            for channels in [list(CHANNELS), *([c] for c in CHANNELS)]:
                for user in users:
                    body = {"user_id": user, "k": 50, "channels": channels}
                    over_http = [
                        r["id"] for r in http.post("/v1/recall", json=body).raise_for_status().json()["results"]
                    ]
                    in_harness = [r["id"] for r in served.answer(user, k=50, channels=channels)["results"]]
                    assert over_http == in_harness, (user, channels)
                    compared += bool(over_http)
            body = {"user_id": users[0], "k": 50, "new_only": True}
            new_ids = [r["id"] for r in http.post("/v1/recall", json=body).raise_for_status().json()["results"]]
    finally:
        server.terminate()
        server.wait(30)
    assert compared >= 0.95 * 100 * (
        len(CHANNELS) + 1
    )  # nearly every answer listed something (cluster-mates may all be seen)
    assert new_ids == [r["id"] for r in served.answer(users[0], k=50, new_only=True)["results"]]
    # the harness's row for a channel is that answer, ranked as listed
    channel = RecallSetChannel("merged")
    channel.served, channel.new_only = served, False
    channel.user_ids, channel.item_index, channel.n_items = data.user_ids, data.item_index, data.n_items
    scores = channel.scores(split.query_users[:1], split.histories[:1])[0]
    listed = [data.items[i].id for i in np.argsort(-scores, kind="stable")[: int(np.isfinite(scores).sum())]]
    assert listed == [r["id"] for r in served.answer(users[0], k=100)["results"]]
    assert dense_scores(None, data.item_index, data.n_items).max() == -np.inf


def test_new_only_recalls_only_items_without_behaviour(tmp_path: Path) -> None:
    """The cold protocol's request: every channel filters inside its search, so the lists fill with cold items."""
    data = load_dataset(generate_demo(tmp_path / "demo", per_leaf=6, users=40))
    split = cold_items_split(data)
    served = build_served(
        data, split, tmp_path / "home", encoder="tiny-test", train={"epochs": 1, "batch_size": 64}, progress=False
    )
    state = served.serving.state
    allowed = new_rows(state)
    cold = {data.items[i].id for i in split.cold_items.tolist()}
    assert {state.live.item(r) for r in np.flatnonzero(allowed).tolist()} == cold  # every demo item has behaviour
    user = data.user_ids[split.query_users[0]]
    for channel in CHANNELS:
        found = [r["id"] for r in served.answer(user, k=10, channels=[channel], new_only=True)["results"]]
        if channel == "sequential":  # not trained here; trained, it knows no item without behaviour either
            assert found == []
            continue
        assert found and set(found) <= cold, channel
        if channel != "cluster":  # cluster-mates are few; the searches fill the list from the filter
            assert len(found) == 10, channel
    unfiltered = [r["id"] for r in served.answer(user, k=10, channels=["personal"])["results"]]
    assert not set(unfiltered) <= cold  # without the filter warm items compete (and mostly win)
