"""The sequential channel: SASRec over item ids, trained by the train job beside G, served in numpy from the
snapshot, through the same recall service as every other channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrecall.core.demo_data import generate_demo
from mmrecall.core.interchange import InteractionRecord, read_items
from tests.helpers import make_settings


def test_the_numpy_model_matches_torch() -> None:
    """What the API computes (recall.sequential, no torch) is what the trained model computes."""
    import torch

    from mmrecall.finetune.sasrec import SASRec, SASRecConfig, left_padded, sasrec_arrays
    from mmrecall.recall.sequential import SequentialModel

    torch.manual_seed(0)
    model = SASRec(60, SASRecConfig(dim=16, max_len=12, blocks=2, dropout=0.0)).eval()
    arrays = sasrec_arrays(model) | {"row_ids": np.arange(60)[::-1].copy()}  # rows in another order than ids
    served = SequentialModel(arrays)
    history_ids = np.array([3, 41, 7, 7, 19])
    with torch.no_grad():
        hidden = model(torch.from_numpy(left_padded([history_ids], 12)))[0, -1]  # (d,)
        expected = (model.item_table() @ hidden).numpy()  # (60,) by model id
    query = served.user_vector(59 - history_ids)  # the same items as snapshot rows
    assert query is not None and np.allclose(query, hidden.numpy(), atol=1e-4)
    rows, scores = served.search(query, 5, np.zeros(60, bool))
    assert (59 - rows).tolist() == np.argsort(-expected)[:5].tolist()
    assert np.allclose(scores, np.sort(expected)[::-1][:5], atol=1e-4)
    blocked = np.zeros(60, bool)
    blocked[rows[0]] = True
    assert rows[0] not in served.search(query, 5, blocked)[0]
    assert served.user_vector(np.array([], np.int64)) is None


@pytest.fixture(scope="module")
def ring_home(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    """A catalogue whose users walk a ring of its items (each item followed by the next), trained with
    `sequential` and served."""
    from mmrecall.pipeline.encode import encode_items
    from mmrecall.pipeline.ingest import ingest_interactions, ingest_items
    from mmrecall.pipeline.training import train_from_catalogue
    from mmrecall.recall.serving import ServingIndex
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    tmp = tmp_path_factory.mktemp("sequential")
    settings = make_settings(tmp / "home", redis_url, encoder="tiny-test")
    settings.ensure_dirs()
    items = sorted(read_items(generate_demo(settings.media_roots[0] / "demo", per_leaf=5, users=1)), key=lambda i: i.id)
    ids = ingest_items(settings, items, enqueue=False)
    encode_items(settings, ids)
    ring = [item.id for item in items]
    rng = np.random.default_rng(0)
    walks = []
    for user in range(150):
        start, length = int(rng.integers(len(ring))), int(rng.integers(6, 14))
        walks += [
            InteractionRecord(user_id=f"w{user:03d}", item_id=ring[(start + step) % len(ring)], timestamp=1e9 + step)
            for step in range(length)
        ]
    ingest_interactions(settings, walks)
    params = {
        "epochs": 1,
        "sequential": True,
        "sequential_params": {
            **{"dim": 32, "max_len": 20, "epochs": 40, "eval_every": 5, "batch_size": 32, "lr": 3e-3, "dropout": 0.1}
        },
    }
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "train", params).id
    result = train_from_catalogue(settings, job_id, params)
    serving = ServingIndex(settings)
    serving.refresh()
    return settings, serving, ring, result


def test_the_train_job_serves_the_sequential_channel(ring_home) -> None:
    from mmrecall.recall.service import history_recall

    _settings, serving, ring, result = ring_home
    assert result["sequential"]["valid_hitrate@50"] > 0.5 and result["sequential"]["dropout"] == 0.1
    assert serving.state.sequential is not None and int(serving.state.sequential.known.sum()) == len(ring)
    hits = 0
    for start in range(0, len(ring), 7):
        history = [ring[(start + step) % len(ring)] for step in range(5)]
        answer = history_recall(serving, history, {}, k=5, channels=["sequential"], in_memory_only=False)
        assert set(answer["channels"]) == {"sequential"} and len(answer["results"]) == 5
        assert not set(history) & {r["id"] for r in answer["results"]}
        hits += ring[(start + 5) % len(ring)] in [r["id"] for r in answer["results"][:3]]
    assert hits >= 0.8 * len(range(0, len(ring), 7)), hits  # the next step of the walk, in the top 3
    merged = history_recall(serving, ring[:5], {}, k=10, in_memory_only=False)
    assert "sequential" in merged["channels"]  # in the merge, with its provenance
    assert any("sequential" in r["channels"] for r in merged["results"]), merged["results"]
    assert "sequential" in serving.state.recall["held_out"]["channels"]  # the merge was tuned with it


def test_new_only_leaves_the_sequential_channel_out(ring_home) -> None:
    """The model knows only items with behaviour: asked for new items only, it has nothing to say."""
    from mmrecall.recall.filters import RecallFilter
    from mmrecall.recall.service import history_recall

    _settings, serving, ring, _ = ring_home
    answer = history_recall(
        serving,
        ring[:5],
        {},
        k=5,
        channels=["sequential"],
        recall_filter=RecallFilter(new_only=True),
        in_memory_only=False,
    )
    assert answer["results"] == []


def test_without_the_model_the_channel_is_silent(tmp_path: Path, redis_url: str) -> None:
    """A snapshot trained without `sequential` serves as before: the channel gives no candidates and the
    merge leaves it out."""
    from mmrecall.pipeline.encode import encode_items
    from mmrecall.pipeline.ingest import ingest_items
    from mmrecall.pipeline.reindex import reindex
    from mmrecall.recall.service import history_recall
    from mmrecall.recall.serving import ServingIndex
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    settings = make_settings(tmp_path / "home", redis_url, encoder="tiny-test")
    settings.ensure_dirs()
    items = list(read_items(generate_demo(settings.media_roots[0] / "demo", per_leaf=3, users=1)))
    encode_items(settings, ingest_items(settings, items, enqueue=False))
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "reindex", {}).id
    reindex(settings, job_id)
    serving = ServingIndex(settings)
    serving.refresh()
    assert serving.state.sequential is None
    history = [items[0].id, items[1].id]
    assert history_recall(serving, history, {}, k=5, channels=["sequential"], in_memory_only=False)["results"] == []
    merged = history_recall(serving, history, {}, k=5, in_memory_only=False)
    assert "sequential" not in merged["channels"] and merged["results"]
