"""Lists as long as asked and free of what the user saw: a user's whole stored history is excluded from
their recall, however long it is (the channels read the latest interactions), and /v1/similar answers a k
wider than the v2v table from live search."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from mmrecall.core.interchange import InteractionRecord, ItemRecord
from mmrecall.pipeline.reindex import reindex
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from tests.helpers import ApiServer, make_settings

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)


def test_a_user_with_1000_interactions_is_never_recalled_what_they_saw(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path / "home", redis_url)
    rng = np.random.default_rng(0)
    # 1,100 items around one centre (the user's taste) and 900 elsewhere: the user saw 1,000 of the first
    # group, so without the whole history excluded their older items would fill the list
    centre = rng.normal(size=32)
    near = centre + 0.35 * rng.normal(size=(1100, 32))
    far = rng.normal(size=(900, 32)) * 3
    vectors = np.concatenate([near, far]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{n:04d}" for n in range(2000)]
    seen = [ids[n] for n in rng.permutation(1100)[:1000]]
    with session_scope(settings.resolved_database_url) as session:
        catalogue.upsert_items(session, [ItemRecord(id=i, title=f"item {i}", tags=["a/b"]) for i in ids])
        catalogue.store_vectors(session, ids, vectors, encoder="synthetic", version="synthetic@1")
        catalogue.add_interactions(
            session, [InteractionRecord(user_id="heavy", item_id=item, timestamp=t) for t, item in enumerate(seen)]
        )
        job = catalogue.create_job(session, "reindex").id
    reindex(settings, job, spec="tiny-test", version="synthetic@1")

    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        answer = http.post("/v1/recall", json={"user_id": "heavy", "k": 100})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        found = [r["id"] for r in body["results"]]
        assert body["history_used"] == 200  # the channels read the latest 200
        assert len(found) == 100 and not set(found) & set(seen)
        unseen_near = set(ids[:1100]) - set(seen)
        assert len(set(found) & unseen_near) >= 90  # the list is the user's taste, not filler
        # the same history sent inline: only those 200 are excluded, so older seen items come back
        latest = [item for item in seen[-200:]]
        inline = http.post("/v1/recall", json={"history": latest, "k": 100}).json()
        assert set(r["id"] for r in inline["results"]) & set(seen[:-200])


def test_similar_answers_a_k_wider_than_the_v2v_table(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path / "home", redis_url, v2v_table_size=20)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"j{n:03d}" for n in range(500)]
    with session_scope(settings.resolved_database_url) as session:
        catalogue.upsert_items(session, [ItemRecord(id=i, title=i) for i in ids])
        catalogue.store_vectors(session, ids, vectors, encoder="synthetic", version="synthetic@1")
        job = catalogue.create_job(session, "reindex").id
    assert reindex(settings, job, spec="tiny-test", version="synthetic@1")["v2v_table"] == 20
    exact = [ids[n] for n in np.argsort(-(vectors @ vectors[0]), kind="stable") if n != 0]
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        for k in (10, 20, 150):
            found = http.get(f"/v1/similar/{ids[0]}", params={"k": k}).json()["results"]
            assert [r["id"] for r in found] == exact[:k], k


def test_served_cluster_recall_weighs_popularity_as_the_harness_does(tmp_path: Path, redis_url: str) -> None:
    """The cluster channel's popularity prior is in the snapshot (counted at reindex) and in the harness,
    computed by one function: a popular cluster-mate outranks a slightly closer one nobody touched."""
    from mmrecall.index.clusters import PRIOR_WEIGHT, popularity_prior

    settings = make_settings(tmp_path / "home", redis_url, cluster_k=1)
    base = np.array([1.0, 0.0, 0.0], np.float32)
    vectors = np.array([base, [0.90, 0.436, 0], [0.92, 0, 0.392], [0, 1, 0], [0, 0, 1]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = ["anchor", "popular", "closer", "x", "y"]
    with session_scope(settings.resolved_database_url) as session:
        catalogue.upsert_items(session, [ItemRecord(id=i, title=i) for i in ids])
        catalogue.store_vectors(session, ids, vectors, encoder="synthetic", version="synthetic@1")
        catalogue.add_interactions(
            session, [InteractionRecord(user_id=f"u{n}", item_id="popular", timestamp=n) for n in range(30)]
        )
        job = catalogue.create_job(session, "reindex").id
    reindex(settings, job, spec="tiny-test", version="synthetic@1")
    prior = popularity_prior(np.array([0, 30, 0, 0, 0]))
    expected = vectors[1:] @ vectors[0] + PRIOR_WEIGHT * prior[1:]
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        found = http.get("/v1/similar/anchor", params={"k": 4, "channel": "cluster"}).json()["results"]
    assert [r["id"] for r in found][:2] == ["popular", "closer"]  # by cosine alone "closer" would lead
    by_id = dict(zip(ids[1:], expected.tolist(), strict=True))
    assert all(abs(r["score"] - by_id[r["id"]]) < 1e-5 for r in found)
