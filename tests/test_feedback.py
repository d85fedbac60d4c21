"""Feedback types (core.events): unknown events refused at every entry, negative feedback never recalled
again and trained on as hard negatives, impressions left out of recall for a while, star ratings as dislikes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrecall.core.dataset import load_dataset
from mmrecall.core.events import DEFAULT_EVENTS, EventRule, UnknownEvent, check_events, parse_rules
from mmrecall.core.interchange import InteractionRecord, ItemRecord, write_interactions, write_items
from mmrecall.storage import catalogue as store
from mmrecall.storage.db import session_scope
from tests.helpers import Service

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

N = 24


@pytest.fixture(scope="module")
def catalogue(service: Service) -> Service:
    topics = ["noodle soup", "tennis serve", "golf swing"]
    items = [{"id": f"e{i}", "title": f"{topics[i % 3]} {i}", "tags": [f"t/{i % 3}"]} for i in range(N)]
    rows = [{"user_id": "fan", "item_id": f"e{i}", "timestamp": 100.0 + i, "event": "click"} for i in (0, 3, 6)]
    service.serve_catalogue(items, rows)
    return service


def recalled(service: Service, user: str = "fan") -> dict:
    response = service.http.post("/v1/recall", json={"user_id": user, "k": N})
    assert response.status_code == 200, response.text
    return response.json()


def test_unknown_events_are_refused_and_nothing_is_stored(catalogue: Service) -> None:
    http = catalogue.http
    rows = [
        {"user_id": "x", "item_id": "e1", "timestamp": 1.0, "event": "click"},
        {"user_id": "x", "item_id": "e2", "timestamp": 2.0, "event": "clik"},
    ]
    response = http.post("/v1/interactions", json={"interactions": rows})
    assert response.status_code == 400
    assert "clik" in response.json()["detail"] and "'dislike'" in response.json()["detail"]
    assert http.post("/v1/recall", json={"user_id": "x"}).json()["history_used"] == 0  # not even the valid row


def test_negative_feedback_is_never_recalled_again(catalogue: Service) -> None:
    http = catalogue.http
    before = recalled(catalogue)
    victim = before["results"][0]["id"]
    dislike = {"user_id": "fan", "item_id": victim, "timestamp": time.time(), "event": "dislike"}
    assert http.post("/v1/interactions", json={"interactions": [dislike]}).status_code == 202
    after = recalled(catalogue)
    assert victim not in {r["id"] for r in after["results"]}
    assert after["history_used"] == before["history_used"] == 3  # a dislike is not history
    assert len(after["results"]) == len(before["results"]) - 1


def test_impressions_leave_recall_for_a_while(catalogue: Service) -> None:
    http = catalogue.http
    shown = [r["id"] for r in recalled(catalogue)["results"][:2]]
    now = time.time()
    impressions = [
        {"user_id": "fan", "item_id": shown[0], "timestamp": now, "event": "impression"},
        {"user_id": "fan", "item_id": shown[1], "timestamp": now - 3 * 86400, "event": "impression"},
    ]
    assert http.post("/v1/interactions", json={"interactions": impressions}).status_code == 202
    after = {r["id"] for r in recalled(catalogue)["results"]}
    assert shown[0] not in after  # shown just now, not acted on
    assert shown[1] in after  # shown three days ago: past read_exclude_s (a day)
    assert recalled(catalogue)["history_used"] == 3  # impressions are not history


def test_event_rules_from_settings() -> None:
    rules = parse_rules({"rating": {"negative_at_most": 2}, "bookmark": {"kind": "positive", "weight": 1.5}})
    assert rules["rating"].classify(2.0) == ("negative", 1.0) and rules["rating"].classify(4.0) == ("positive", 4.0)
    assert rules["bookmark"].classify(None) == ("positive", 1.5) and rules["dislike"].kind == "negative"
    assert rules["watch"].classify(0.3) == ("positive", 0.3)  # a watch ratio is a weight
    for bad, reason in (
        ({"x": {"kind": "hate"}}, "kind must be one of"),
        ({"x": {"weight": 0}}, "must be positive"),
        ({"x": {"colour": "red"}}, "unknown fields"),
        ({"x": 3}, "expected an object"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_rules(bad)
    with pytest.raises(UnknownEvent, match="known: "):
        check_events(["click", "nope"], DEFAULT_EVENTS)


def test_ingest_refuses_unknown_events_before_storing_anything(tmp_path: Path, redis_url: str) -> None:
    dataset = tmp_path / "data"
    write_items(dataset, [ItemRecord(id="a", title="a"), ItemRecord(id="b", title="b")])
    rows = [InteractionRecord(user_id="u", item_id="a", timestamp=1.0, event="tapped")]
    write_interactions(dataset, rows)
    home = tmp_path / "home"
    env = {"MMRECALL_HOME": str(home), "MMRECALL_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "mmrecall.cli", "ingest", str(dataset), "--no-wait"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0 and "tapped" in done.stderr + done.stdout
    if (home / "mmrecall.db").exists():
        with session_scope(f"sqlite:///{home / 'mmrecall.db'}") as session:
            assert store.count_by_status(session) == {}


def test_star_ratings_as_dislikes_become_hard_negatives(tmp_path: Path) -> None:
    import torch

    from mmrecall.finetune.g_train import GTrainConfig, GTrainer, Interactions, disliked_by_user, make_config

    write_items(tmp_path, [ItemRecord(id=f"m{i}", title=f"movie {i}") for i in range(8)])
    ratings = [(0, 5.0), (1, 1.0), (2, 4.0), (3, 2.0), (4, 3.0)]
    rows = [
        InteractionRecord(user_id="u", item_id=f"m{i}", timestamp=float(i), event="rating", weight=w)
        for i, w in ratings
    ]
    rows.append(InteractionRecord(user_id="u", item_id="m5", timestamp=9.0, event="impression"))
    write_interactions(tmp_path, rows)
    data = load_dataset(tmp_path, parse_rules({"rating": {"negative_at_most": 2}}))
    assert [data.items[i].id for i in data.items_of] == ["m0", "m2", "m4"]  # positives only: no dislike, no read
    assert data.weights.tolist() == [5.0, 4.0, 3.0]
    assert sorted(data.items[i].id for i in data.negative_items) == ["m1", "m3"]
    assert load_dataset(tmp_path).negative_items.tolist() == []  # by default a rating is a positive

    interactions = Interactions(data.users, data.items_of, data.weights, None, data.negative_users, data.negative_items)
    disliked = disliked_by_user(interactions)
    assert {u: sorted(v.tolist()) for u, v in disliked.items()} == {0: [1, 3]}
    features = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    trainer = GTrainer(
        make_config(features, ("synthetic",), hidden=8, dim=4, history=4),
        features,
        [i.id for i in data.items],
        data.user_ids,
        GTrainConfig(disliked_rate=1.0, hard_negatives=False),
    )
    from mmrecall.finetune.frequency import StreamingFrequency
    from mmrecall.finetune.g_train import FitState, FlatSequences

    state = FitState(
        seqs={0: np.array([0, 2, 4])},
        flat=FlatSequences.of({0: np.array([0, 2, 4])}, None, 8),
        known=torch.ones(8, dtype=torch.bool),
        frequency=StreamingFrequency(),
        hard_pool=None,
        tag_sums={},
        disliked=disliked,
    )
    _, hard = trainer._negatives(np.zeros(50, np.int64), np.zeros(50, np.int64), state)
    assert set(hard.tolist()) == {1, 3}  # every row's hard negative is one of the user's dislikes
    assert EventRule().classify(None) == ("positive", 1.0)
