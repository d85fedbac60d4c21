"""The vector-store interface (index.store) on both backends: faiss in process and Milvus (Milvus Lite, the
embedded build from PyPI; the same client reaches a cluster by URL). Each is checked for the same
behaviour: filtered search inside the store, upsert and delete, an alias that keeps answering from the old
collection until it is swapped, clear errors for what cannot be answered; and, with exact search on both,
the same ids for the same queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrecall.index.store import StoreError, open_store


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=["faiss", "milvus-lite"])
def store(request, tmp_path: Path):
    return open_store("faiss" if request.param == "faiss" else str(tmp_path / "milvus.db"), home=tmp_path)


def test_search_filters_upserts_deletes_and_swaps_aliases(store) -> None:
    rng = np.random.default_rng(0)
    ids = [f"item{i}" for i in range(300)]
    vectors = unit(rng, 300, 16)
    store.create("items_v1", 16)
    store.upsert("items_v1", ids, vectors)
    assert store.count("items_v1") == 300 and store.dim("items_v1") == 16
    query = vectors[7]
    exact = [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")]
    hits = store.search("items_v1", query, 10)[0]
    assert [i for i, _ in hits] == exact[:10] and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    # the filters act inside the search: k hits come back from the allowed ids, none excluded
    allowed = ids[::10]
    found = [i for i, _ in store.search("items_v1", query, 5, allowed=allowed, exclude=[exact[0]])[0]]
    assert found == [i for i in exact if i in set(allowed) and i != exact[0]][:5]
    store.delete("items_v1", [exact[1]])
    store.upsert("items_v1", ["item299"], query[None, :])  # replaced: now the query's twin
    found = [i for i, _ in store.search("items_v1", query, 3)[0]]
    assert exact[1] not in found and set(found[:2]) == {"item7", "item299"} and store.count("items_v1") == 299
    # the alias serves v1 until it is swapped to v2 (a reindex's new collection)
    store.swap_alias("items", "items_v1")
    assert store.resolve("items") == "items_v1"
    store.create("items_v2", 16)
    store.upsert("items_v2", ["only"], query[None, :])
    assert store.search("items", query, 1)[0][0][0] == "item7" or store.search("items", query, 1)[0][0][0] == "item299"
    store.swap_alias("items", "items_v2")
    assert store.search("items", query, 3)[0] == [("only", pytest.approx(1.0, abs=1e-4))]
    with pytest.raises(StoreError, match="served under an alias"):
        store.drop("items_v2")
    store.drop("items_v1")
    assert "items_v1" not in store.collections() and "items_v2" in store.collections()


def test_what_cannot_be_answered_is_a_clear_error(store) -> None:
    with pytest.raises(StoreError, match="no collection or alias 'missing'"):
        store.search("missing", np.zeros((1, 8), np.float32), 5)
    store.create("items", 8)
    with pytest.raises(StoreError, match="holds 8-dimensional vectors, not 4"):
        store.upsert("items", ["a"], np.ones((1, 4), np.float32))
    with pytest.raises(StoreError, match="holds 8-dimensional vectors, not 3"):
        store.search("items", np.ones((1, 3), np.float32), 5)
    with pytest.raises(StoreError, match="exists"):
        store.create("items", 8)
    with pytest.raises(StoreError, match="not a collection or alias name"):
        store.create("1-bad name", 8)


def test_an_unreachable_store_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not answer"):
        open_store("milvus://127.0.0.1:9", home=tmp_path)
    with pytest.raises(StoreError, match="unknown vector store"):
        open_store("qdrant://somewhere", home=tmp_path)


def test_both_backends_give_the_same_ids_with_exact_search(tmp_path: Path) -> None:
    """10k items, exact search on both (faiss Flat, Milvus FLAT below 20k rows): 100 queries, the same top 50."""
    rng = np.random.default_rng(1)
    ids = [f"item{i}" for i in range(10_000)]
    vectors, queries = unit(rng, 10_000, 32), unit(rng, 100, 32)
    answers = []
    for url in ("faiss", str(tmp_path / "milvus.db")):
        store = open_store(url, home=tmp_path)
        store.create("items", 32)
        store.upsert("items", ids, vectors)
        answers.append([[i for i, _ in hits] for hits in store.search("items", queries, 50)])
    assert answers[0] == answers[1]
    expected = [[ids[i] for i in np.argsort(-(vectors @ q), kind="stable")[:50]] for q in queries]
    assert answers[0] == expected
