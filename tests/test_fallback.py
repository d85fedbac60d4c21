"""The non-personalised channels over HTTP: a user without history is answered from popular, trending and
latest (and says so), a short history gets them merged in, filters apply to them, and each can be asked by
name."""

from __future__ import annotations

import pytest

from tests.helpers import Service
from tests.test_filters import N, catalogue, item  # noqa: F401  # the catalogue fixture: items, behaviour, a snapshot

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

FALLBACKS = {"popular", "trending", "latest"}


def post(service: Service, **body) -> dict:
    response = service.http.post("/v1/recall", json={"k": 10, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_user_without_history_gets_the_fallback_channels(catalogue: Service) -> None:  # noqa: F811
    stranger = post(catalogue, user_id="stranger")
    assert stranger["fallback"] and stranger["history_used"] == 0 and len(stranger["results"]) == 10
    assert set(stranger["channels"]) == FALLBACKS
    assert all(set(r["channels"]) <= FALLBACKS and r["sources"] for r in stranger["results"])
    empty = post(catalogue, history=[])
    assert [r["id"] for r in empty["results"]] == [r["id"] for r in stranger["results"]]

    popular = post(catalogue, history=[], channels=["popular"])["results"]
    # f0..f11 each have three interactions; the newest (f11, at t=111) decays least
    best = max(popular, key=lambda r: r["sources"][0]["score"])
    assert (
        best["id"] == "f11"
        and best["sources"][0]["score"] == 1.0
        and {r["id"] for r in popular} <= {f"f{i}" for i in range(12)}
    )
    latest = post(catalogue, history=[], channels=["latest"])["results"]
    by_channel_score = sorted(latest, key=lambda r: -r["sources"][0]["score"])  # the merge's rerank diversifies
    assert [r["id"] for r in by_channel_score[:3]] == [f"f{N - 1}", f"f{N - 2}", f"f{N - 3}"]  # by created_at
    trending = post(catalogue, history=[], channels=["trending"])["results"]
    assert {r["id"] for r in trending} <= {f"f{i}" for i in range(12)}  # items with recent interactions only


def test_short_histories_merge_the_fallbacks_in_and_filters_apply(catalogue: Service) -> None:  # noqa: F811
    short = post(catalogue, history=["f0"], k=30)
    assert short["fallback"] and FALLBACKS <= set(short["channels"]) and "v2v" in short["channels"]
    warm = post(catalogue, history=["f0", "f1", "f2"])
    assert not warm["fallback"] and not FALLBACKS & set(warm["channels"])
    asked = post(catalogue, history=["f0", "f1", "f2"], channels=["latest"])
    assert not asked["fallback"] and set(asked["channels"]) == {"latest"}

    golf = post(catalogue, user_id="stranger", include_tags=["sports/golf"], exclude_ids=["f39"])
    assert golf["results"] and all(item(int(r["id"][1:]))["tags"] == ["sports/golf"] for r in golf["results"])
    assert "f39" not in {r["id"] for r in golf["results"]}
    seen = post(catalogue, user_id="u0", channels=["popular"], k=N)  # u0 saw f0..f11: never recalled back
    assert seen["results"] == [] and seen["short_by"] == N
