import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmrecall.index import LiveIndex, VectorIndex, choose_factory
from mmrecall.storage import snapshots


def low_rank_unit(n: int, d: int = 64, rank: int = 12, seed: int = 0) -> np.ndarray:
    """Vectors with a low intrinsic dimension, like real embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.1 * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


def test_flat_equals_exact_search() -> None:
    base = low_rank_unit(2000)
    index = VectorIndex.build([str(i) for i in range(2000)], base, "Flat")
    scores, positions = index.search(base[:20], 10)
    assert np.array_equal(positions, exact_topk(base, base[:20], 10))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_hnsw_recall_against_exact() -> None:
    base = low_rank_unit(20_000, seed=1)
    queries = low_rank_unit(200, seed=2)
    index = VectorIndex.build([str(i) for i in range(len(base))], base, "HNSW32,Flat")
    _, positions = index.search(queries, 100)
    truth = exact_topk(base, queries, 100)
    recall = np.mean([len(set(p) & set(t)) / 100 for p, t in zip(positions, truth, strict=True)])
    assert recall >= 0.95, recall


def test_quantised_hnsw_reaches_the_recall_and_answers_exact_scores(tmp_path: Path) -> None:
    """The large-catalogue default links 8-bit codes: its recall holds against exact search, and the scores
    it answers are the float vectors' inner products, best first (also after a save and load)."""
    base = low_rank_unit(20_000, seed=1)
    queries = low_rank_unit(200, seed=2)
    factory = choose_factory(len(base), exact_below=10_000)
    index = VectorIndex.build([str(i) for i in range(len(base))], base, factory)
    assert "SQ8" in factory and not index.exact_scores
    scores, positions = index.search(queries, 100)
    truth = exact_topk(base, queries, 100)
    assert np.mean([len(set(p) & set(t)) / 100 for p, t in zip(positions, truth, strict=True)]) >= 0.95
    assert np.allclose(scores, np.take_along_axis(queries @ base.T, positions, axis=1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    codes_scores, _ = index.index.search(queries, 100)  # what the codes alone give: close, not exact
    assert 0 < np.abs(np.sort(codes_scores, axis=1) - np.sort(scores, axis=1)).max() < 0.02
    index.save(tmp_path / "snap")
    loaded = VectorIndex.load(tmp_path / "snap")
    assert not loaded.exact_scores and np.array_equal(loaded.search(queries[:5], 10)[1], positions[:5, :10])
    assert VectorIndex.build(["a", "b"], base[:2], "HNSW32,Flat").exact_scores


def test_search_breadth_is_tuned_to_the_target_recall_and_stored(tmp_path: Path) -> None:
    """Reindex sets HNSW's efSearch to the smallest that reaches the target recall@100 on user-like
    queries; a higher target never gets a smaller breadth, the reached recall holds on fresh queries,
    and the snapshot keeps the breadth."""
    base = low_rank_unit(20_000, seed=1)
    index = VectorIndex.build([str(i) for i in range(len(base))], base, "HNSW8,Flat")  # a sparse graph
    loose = index.tune_search(0.90)
    strict = index.tune_search(0.995)
    assert loose["ann_recall_at_100"] >= 0.90 and strict["ann_recall_at_100"] >= 0.995
    assert loose["ef_search"] < strict["ef_search"]  # 0.90 is reached well before 0.995 here
    rng = np.random.default_rng(3)
    queries = base[rng.integers(len(base), size=(100, 20))].mean(axis=1)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_topk(base, queries, 100)
    recall = np.mean([len(set(p) & set(t)) / 100 for p, t in zip(index.search(queries, 100)[1], truth, strict=True)])
    assert recall >= 0.985, recall  # the tuned breadth serves unseen queries about as well
    index.save(tmp_path / "snap")
    assert VectorIndex.load(tmp_path / "snap").index.hnsw.efSearch == strict["ef_search"]
    assert VectorIndex.build(["a", "b"], base[:2], "Flat").tune_search(0.99) == {}  # exact search: nothing to tune


def test_item_query_breadth_reaches_its_target_on_the_items_neighbourhoods() -> None:
    """The v2v table's breadth is tuned on item queries (each item's own top 100): what it reports holds
    on other items, and the rung below it on the ladder does worse."""
    from mmrecall.index.ann import EF_LADDER

    base = low_rank_unit(20_000, seed=2)
    index = VectorIndex.build([str(i) for i in range(len(base))], base, "HNSW8,Flat")
    ef, recall = index.search_breadth(0.99, blend=1)
    assert recall >= 0.99 and ef in EF_LADDER and ef > EF_LADDER[0]
    rows = np.random.default_rng(5).integers(len(base), size=150)
    truth = exact_topk(base, base[rows], 100)

    def measured(breadth: int) -> float:
        _, found = index.index.search(base[rows], 100, params=faiss.SearchParametersHNSW(efSearch=breadth))
        return float(np.mean([len(set(f) & set(t)) / 100 for f, t in zip(found, truth, strict=True)]))

    assert measured(ef) >= 0.985  # holds on other items
    assert measured(EF_LADDER[EF_LADDER.index(ef) - 1]) < measured(ef)


def test_choose_factory_by_size() -> None:
    assert choose_factory(1000) == choose_factory(19_999) == "Flat"
    assert choose_factory(20_000).startswith("HNSW") and choose_factory(1_000_000).startswith("HNSW")
    assert choose_factory(100_000, exact_below=200_000) == "Flat"
    assert choose_factory(10, "IVF16,PQ8") == "IVF16,PQ8"


def test_save_load_roundtrip(tmp_path: Path) -> None:
    base = low_rank_unit(500)
    index = VectorIndex.build([f"i{i}" for i in range(500)], base, "HNSW16,Flat")
    index.save(tmp_path / "snap")
    loaded = VectorIndex.load(tmp_path / "snap")
    assert loaded.ids == index.ids and loaded.factory == "HNSW16,Flat"
    assert np.array_equal(loaded.search(base[:5], 7)[1], index.search(base[:5], 7)[1])
    assert np.allclose(loaded.vector("i3"), base[3])


def test_live_index_delta_supersedes_snapshot_and_excludes() -> None:
    base = low_rank_unit(300)
    ids = [f"i{i}" for i in range(300)]
    live = LiveIndex(VectorIndex.build(ids, base))
    query = base[0]
    first = live.search(query, 5, exclude={"i0"})
    assert "i0" not in [n.id for n in first] and len(first) == 5
    # a new item placed right on the query is found at once, without a reindex
    live.add(["new"], query[None, :])
    assert live.search(query, 1, exclude={"i0"})[0].id == "new"
    # re-encoding an item moves it: the snapshot's old vector must not answer any more
    moved = -query
    live.add(["i0"], moved[None, :])
    assert all(n.id != "i0" for n in live.search(query, 50))
    assert np.allclose(live.vector("i0"), moved)
    assert len(live) == 301
    # the same id twice in one call: the last vector wins
    live.add(["dup", "dup"], np.stack([base[5], base[6]]))
    assert np.allclose(live.vector("dup"), base[6])


def test_live_index_without_snapshot_and_dim_check() -> None:
    live = LiveIndex()
    assert live.search(np.ones(4, np.float32), 3) == []
    live.add(["a", "b"], np.eye(4, dtype=np.float32)[:2])
    assert [n.id for n in live.search(np.array([1, 0, 0, 0], np.float32), 2)] == ["a", "b"]
    with pytest.raises(ValueError, match="dim"):
        live.add(["c"], np.ones((1, 3), np.float32))


def test_snapshot_publish_is_atomic_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    assert snapshots.current_snapshot(root) is None
    made = []
    for n in range(5):
        path = snapshots.new_snapshot_dir(root, f"job{n}")
        assert snapshots.current_snapshot(root) != path  # invisible until published
        snapshots.publish(root, path, {"n": n})
        made.append(path)
        assert snapshots.current_snapshot(root) == path
    removed = snapshots.prune(root, keep=2)
    assert set(removed) == set(made[:3]) and snapshots.read_meta(snapshots.current_snapshot(root)) == {"n": 4}


def test_the_snapshot_layout_owns_every_file_and_refuses_other_versions(tmp_path: Path) -> None:
    """The writer's parts read back whole through the one reader; every file written is one the layout
    lists; a snapshot of another layout version is refused with the command that rebuilds it."""
    from mmrecall.index.clusters import ClusterTable
    from mmrecall.index.item_meta import ItemMeta
    from mmrecall.index.v2v import neighbor_table

    vectors = low_rank_unit(60, d=16)
    ids = [f"i{n}" for n in range(60)]
    built = VectorIndex.build(ids, vectors, "Flat")
    writer = snapshots.SnapshotWriter(tmp_path / "snapshots", "test")
    writer.index(built)
    table = ClusterTable.build(vectors, 4)
    writer.clusters(table)
    writer.item_meta(ItemMeta.build(60, [(n, f"title {n}", ["a/b"]) for n in range(60)]))
    rows, scores = neighbor_table(built, n=5)
    writer.v2v_table(rows, scores)
    writer.user_tower({"query": np.ones(16, np.float32)})
    writer.publish({"encoder_version": "v@1", "count": 60, "max_row": 60})
    written = {path.name for path in writer.directory.iterdir()}
    assert written <= set(snapshots.FILES), written - set(snapshots.FILES)

    loaded = snapshots.load_snapshot(snapshots.current_snapshot(tmp_path / "snapshots"))
    assert loaded.meta["layout"] == snapshots.LAYOUT_VERSION and loaded.index.ids == ids
    assert np.array_equal(loaded.clusters.assignment, table.assignment)
    assert np.array_equal(loaded.v2v_rows, rows) and not loaded.v2v_rows.flags.writeable
    assert loaded.item_meta.titles([3]) == ["title 3"] and np.array_equal(loaded.user_tower["query"], np.ones(16))

    meta_path = writer.directory / snapshots.META
    meta = snapshots.read_meta(writer.directory)
    del meta["layout"]  # written before the version was recorded: the first layout
    meta_path.write_text(json.dumps(meta))
    assert snapshots.load_snapshot(writer.directory).index.ids == ids
    meta_path.write_text(json.dumps({**meta, "layout": snapshots.LAYOUT_VERSION + 1}))
    with pytest.raises(snapshots.SnapshotLayoutError, match="mmrecall reindex"):
        snapshots.load_snapshot(writer.directory)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "HNSW32,SQ8", "IVF16,Flat"])
def test_a_filtered_search_is_exact_search_among_the_allowed_rows(factory: str) -> None:
    """The filter runs inside the search: a filter passing 5% of the rows still fills k with them."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    allowed = rng.random(len(vectors)) < 0.05
    index = VectorIndex.build([str(i) for i in range(len(vectors))], vectors, factory)
    queries = vectors[:20]
    exact = np.argsort(-(queries @ vectors.T) + np.where(allowed, 0.0, 10.0), axis=1)[:, :20]
    _, found = index.search(queries, 20, allowed=allowed)
    assert allowed[found].all()
    recall = np.mean([len(set(f) & set(e)) / 20 for f, e in zip(found, exact, strict=True)])
    assert recall >= (1.0 if factory == "Flat" else 0.9)
    live = LiveIndex(index)
    fresh = rng.normal(size=32).astype(np.float32)
    fresh /= np.linalg.norm(fresh)
    live.add(["new"], fresh[None])  # a delta row, allowed: the query's own vector ranks first
    rows, _ = live.search_rows(fresh, 5, allowed=np.append(allowed, True))
    assert rows[0] == len(vectors) and np.append(allowed, True)[rows].all()
