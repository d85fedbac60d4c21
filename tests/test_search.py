"""Search by title as a search box does it: the exact title first, then titles that start with the query,
then full-text relevance fused with the embedding rank; on SQLite (FTS5) and PostgreSQL (text search)."""

from __future__ import annotations

import time

import pytest

from mmrecall.api.search import fuse_title_search
from mmrecall.core.interchange import ItemRecord
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.storage.title_search import title_matches
from tests.helpers import Service

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

TITLES = {
    "m1": "Toy Story (1995)",
    "m2": "Toy Story 2 (1999)",
    "m3": "Toy Soldiers (1991)",
    "m4": "Story of Us, The (1999)",
    "m5": "Star Wars: Episode IV - A New Hope (1977)",
    "m6": "Star Wars: Episode V - The Empire Strikes Back (1980)",
    "m7": "Stars Fell on Henrietta, The (1995)",
}


def test_fusion_puts_exact_then_yearless_then_prefix_matches_first() -> None:
    lexical = [("m4", TITLES["m4"]), ("m2", TITLES["m2"]), ("m1", TITLES["m1"])]  # relevance can be off
    semantic = [("m3", TITLES["m3"]), ("m2", TITLES["m2"])]
    found = fuse_title_search("Toy Story", lexical, semantic, 10)
    assert [(r["id"], r["match"]) for r in found[:2]] == [("m1", "title"), ("m2", "prefix")]
    # m3 and m4 tie (each first in one ranking): the shorter title first
    assert [(r["id"], r["match"]) for r in found[2:]] == [("m3", "related"), ("m4", "related")]
    assert fuse_title_search("toy story (1995)", lexical, semantic, 1)[0] == {
        "id": "m1",
        "score": pytest.approx(1 / 63),
        "title": "Toy Story (1995)",
        "match": "exact",
    }
    # outside the match classes the two rankings fuse: in both beats first in one
    assert [r["id"] for r in fuse_title_search("soldier", [("a", "x"), ("b", "y")], [("b", "y")], 2)] == ["b", "a"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_full_text_matches_every_word_the_last_as_a_prefix(backend: str, tmp_path, request) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    with session_scope(url) as session:
        catalogue.upsert_items(session, [ItemRecord(id=i, title=t) for i, t in TITLES.items()])
    with session_scope(url) as session:
        assert {i for i, _ in title_matches(session, "toy story")} == {"m1", "m2"}
        assert {i for i, _ in title_matches(session, "star wa")} == {"m5", "m6"}  # typing: "wa" is a prefix
        assert title_matches(session, "empire back")[0][0] == "m6"
        assert {i for i, _ in title_matches(session, "toy wars")} >= {"m1", "m5"}  # no title has both: any
        assert title_matches(session, '" OR * NEAR(') == []  # query syntax never reaches the engine
        catalogue.upsert_items(session, [ItemRecord(id="m3", title="Toy Soldier Story (1991)")])
        catalogue.delete_item(session, "m2")
    with session_scope(url) as session:  # the index follows updates and deletions
        assert {i for i, _ in title_matches(session, "toy story")} == {"m1", "m3"}


def test_search_route_ranks_the_title_first_over_http(service: Service) -> None:
    http = service.http
    ids = http.post("/v1/items", json={"items": [{"id": i, "title": t} for i, t in TITLES.items()]}).json()["ids"]
    service.wait_items(ids)
    deadline = time.time() + 10
    while True:  # the API picks the new vectors up from the change feed
        found = http.get("/v1/search", params={"q": "Toy Story"}).json()
        if found["mode"] == "hybrid" or time.time() > deadline:
            break
        time.sleep(0.2)
    assert found["mode"] == "hybrid" and found["encoder"].startswith("tiny-test@")
    assert [r["id"] for r in found["results"][:2]] == ["m1", "m2"]
    exact = http.get("/v1/search", params={"q": "Star Wars: Episode V - The Empire Strikes Back (1980)"}).json()
    assert exact["results"][0]["id"] == "m6" and exact["results"][0]["match"] == "exact"
    assert http.get("/v1/search", params={"q": "m5"}).json()["mode"] == "id"
