"""The recall channels' building blocks over numpy and faiss: clusters, v2v table, multi-interest,
merge with provenance, and the numpy user tower matching the torch one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrecall.finetune.export import export_user_tower
from mmrecall.index.ann import VectorIndex
from mmrecall.index.clusters import ClusterTable, cluster_recall, default_k
from mmrecall.index.ranked import Ranked, member_mask
from mmrecall.index.v2v import neighbor_table, recall_from_triggers, stack_neighbors
from mmrecall.recall.merge import MergeWeights, describe, merge, rerank, union
from mmrecall.recall.multi_interest import interests, quotas
from mmrecall.recall.towers import UserTowerNumpy
from tests.test_index import low_rank_unit


def blobs(n_per: int = 30, centres: int = 5, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, d))
    labels = np.repeat(np.arange(centres), n_per)
    x = centre[labels] + 0.15 * rng.normal(size=(len(labels), d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, labels


def test_kmeans_finds_the_blobs_and_cluster_recall_stays_inside() -> None:
    x, labels = blobs()
    table = ClusterTable.build(x, k=5)
    for c in range(5):  # each k-means cluster is one blob
        assert len(set(labels[table.members[c]])) == 1
    recalled = cluster_recall(table, x, [(0, 1.0), (40, 0.5)], k=100)
    rows = recalled.rows.tolist()
    assert 0 not in rows and 40 not in rows and set(labels[rows]) == {labels[0], labels[40]}
    assert set(recalled.trigger.tolist()) == {0, 40}
    scores = recalled.scores.tolist()
    assert scores == sorted(scores, reverse=True)
    assert (
        len(rows)
        == len(set(rows))
        == len(table.members[table.assignment[0]]) - 1 + len(table.members[table.assignment[40]]) - 1
    )
    # excluded and disallowed rows are never returned; the rest keep their order
    allowed = np.ones(len(x), bool)
    allowed[rows[1]] = False
    fewer = cluster_recall(table, x, [(0, 1.0), (40, 0.5)], k=100, exclude=np.array([rows[0]]), allowed=allowed)
    assert fewer.rows.tolist() == rows[2:]


def test_cluster_recall_keeps_the_full_ranking_when_each_trigger_is_cut_to_k() -> None:
    """Each trigger contributes at most k before the merge: the first k overall must not change."""
    rng = np.random.default_rng(1)
    x = low_rank_unit(2000)
    table = ClusterTable.build(x, k=4)
    triggers = [
        (int(r), float(w)) for r, w in zip(rng.integers(2000, size=6), [1, 0.9, 0.9, 0.5, 0.5, 0.2], strict=True)
    ]
    full = cluster_recall(table, x, triggers, k=2000)
    for k in (1, 10, 100):
        cut = cluster_recall(table, x, triggers, k=k)
        assert cut.rows.tolist() == full.rows[:k].tolist() and cut.trigger.tolist() == full.trigger[:k].tolist()
    assert table.assign(x[3]) == table.assignment[3]
    assert default_k(10_000) == 400 and default_k(3) == 1


def test_neighbor_table_matches_exact_search() -> None:
    x = low_rank_unit(500)
    rows, scores = neighbor_table(VectorIndex.build([str(i) for i in range(500)], x), n=10, batch=128)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert np.array_equal(rows, np.argsort(-sims, axis=1, kind="stable")[:, :10])
    assert np.allclose(scores[:, 0], sims.max(axis=1), atol=1e-2)


def test_recall_from_triggers_sums_and_keeps_provenance() -> None:
    a, b, x, y, seen = range(5)
    table = {a: ([x, y, seen], [0.9, 0.5, 0.95]), b: ([y, a], [0.8, 0.7])}
    out = recall_from_triggers(
        [a, b], lambda ts: stack_neighbors([table[t] for t in ts]), k=5, decay=0.5, exclude=np.array([seen])
    )
    assert out.rows.tolist() == [x, y]  # a itself is a trigger, never recalled; seen is excluded
    assert out.scores[1] == pytest.approx(0.5 + 0.5 * 0.8) and out.trigger.tolist() == [a, a]
    # ties in the total keep the order items were first met; the best single contribution names the trigger
    tied = {a: ([x, y], [0.5, 0.5]), b: ([y, x], [1.0, 1.0])}
    out = recall_from_triggers([a, b], lambda ts: stack_neighbors([tied[t] for t in ts]), k=5, decay=0.5)
    assert out.rows.tolist() == [x, y] and out.trigger.tolist() == [a, a]
    nothing = stack_neighbors([(np.zeros(0, int), np.zeros(0))])
    assert recall_from_triggers([a], lambda ts: nothing, k=5).rows.tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_recall_from_triggers_matches_its_definition_with_many_ties(seed: int) -> None:
    """Against a plain Python reading of the docstring: scores summed over triggers, ties in the order
    items were first met, provenance the trigger that contributed most (the latest on ties)."""
    rng = np.random.default_rng(seed)
    triggers = rng.choice(50, size=6, replace=False).tolist()
    table = {t: (rng.choice(60, size=25, replace=False), rng.integers(1, 5, size=25) / 4.0) for t in triggers}
    exclude = rng.choice(60, size=5, replace=False)
    totals, first, best = {}, {}, {}
    for weight, trigger in zip(0.5 ** np.arange(len(triggers)), triggers, strict=True):
        for row, similarity in zip(*table[trigger], strict=True):
            row = int(row)
            if row in triggers or row in exclude:
                continue
            contribution = weight * similarity
            first.setdefault(row, len(first))
            totals[row] = totals.get(row, 0.0) + contribution
            if contribution > best.get(row, (-np.inf, None))[0]:
                best[row] = (contribution, trigger)
    expected = sorted(totals, key=lambda r: (-totals[r], first[r]))
    for k in (1, 7, 30, 200):
        out = recall_from_triggers(
            triggers, lambda ts: stack_neighbors([table[t] for t in ts]), k=k, decay=0.5, exclude=exclude
        )
        assert out.rows.tolist() == expected[:k]
        assert out.trigger.tolist() == [best[r][1] for r in expected[:k]]
        assert np.allclose(out.scores, [totals[r] for r in expected[:k]])


def test_cut_forms_the_clusters_of_scipys_fcluster() -> None:
    from scipy.cluster.hierarchy import fcluster, linkage

    from mmrecall.recall.multi_interest import cut

    rng = np.random.default_rng(0)
    for trial in range(20):
        x = rng.normal(size=(int(rng.integers(2, 60)), 8)) + 3 * rng.normal(size=(3, 8))[rng.integers(3, size=1)]
        link = linkage(x, method="ward")
        threshold = float(np.quantile(link[:, 2], rng.random()))
        ours, scipys = cut(link, len(x), threshold), fcluster(link, t=threshold, criterion="distance")
        pairs = set(zip(ours.tolist(), scipys.tolist(), strict=True))  # the same partition up to relabelling
        assert len(pairs) == len(set(ours.tolist())) == len(set(scipys.tolist())), trial


def test_interests_separate_two_tastes_and_weigh_recency() -> None:
    x, labels = blobs(n_per=10, centres=2)
    history = np.concatenate([x[labels == 0][:8], x[labels == 1][:3]])  # old taste 8 items, recent taste 3
    found = interests(history, threshold=1.0, half_life=2.0)
    assert len(found) == 2
    assert set(found[0].members) == {8, 9, 10}  # the recent taste is the more important one
    assert found[0].medoid in found[0].members
    assert sum(quotas(found, 50)) == 50 and quotas(found, 50)[0] > quotas(found, 50)[1]
    assert interests(np.zeros((0, 4), np.float32)) == []


def merge_named(results: dict[str, list[dict]], *, k: int, seen: set[str], tags_of, weights=None) -> list[dict]:
    """recall.merge on named items: names become rows (in order of first appearance) and back."""
    names: dict[str, int] = {}

    def row(name: str) -> int:
        return names.setdefault(name, len(names))

    channels = {
        channel: Ranked.of(
            [row(r["id"]) for r in entries],
            [r["score"] for r in entries],
            [row(r["trigger"]) for r in entries] if entries and "trigger" in entries[0] else None,
        )
        for channel, entries in results.items()
    }
    seen_rows = np.array([row(s) for s in seen], np.int64)
    by_row = {r: name for name, r in names.items()}
    pool, picks = merge(
        channels,
        k=k,
        seen=seen_rows,
        categories=lambda rows: [tags_of(by_row[r]) for r in rows],
        weights=weights or MergeWeights(),
    )
    return describe(pool, picks, by_row.__getitem__)


def test_merge_dedupes_drops_seen_and_rewards_agreement_and_diversity() -> None:
    results = {
        "v2v": [
            {"id": "a", "score": 0.9, "trigger": "t1"},
            {"id": "b", "score": 0.8, "trigger": "t1"},
            {"id": "seen", "score": 0.99, "trigger": "t2"},
        ],
        "cluster": [{"id": "b", "score": 0.7, "trigger": "t2"}, {"id": "c", "score": 0.6, "trigger": "t2"}],
    }
    tags = {"a": ["food"], "b": ["food"], "c": ["sports"]}
    out = merge_named(results, k=3, seen={"seen"}, tags_of=lambda i: tags[i])
    assert [r["id"] for r in out][0] == "b"  # two channels agree on b
    assert "seen" not in [r["id"] for r in out] and len(out) == 3
    b = out[0]
    assert b["channels"] == ["cluster", "v2v"] and {s["trigger"] for s in b["sources"]} == {"t1", "t2"}
    only_sim = merge_named(
        results,
        k=3,
        seen=set(),
        tags_of=lambda i: tags.get(i, []),
        weights=MergeWeights(alpha=0.0, beta=0.0, quotas={"v2v": 1}),
    )
    assert [r["id"] for r in only_sim] == ["a", "b", "c"]  # quota: v2v gives only its first


def test_rank_fusion_weighs_ranks_not_raw_scores() -> None:
    results = {
        "personal": [{"id": "p1", "score": 0.2}, {"id": "p2", "score": 0.1}, {"id": "both", "score": 0.05}],
        "v2v": [{"id": "v1", "score": 9.0}, {"id": "both", "score": 8.0}],  # another scale altogether
    }
    fused = MergeWeights(mode="rank", rrf_k=1.0, alpha=0.0, beta=0.0, trust={"v2v": 0.5})
    out = merge_named(results, k=5, seen=set(), tags_of=lambda i: [], weights=fused)
    # personal 1/(1+rank), v2v 0.5/(1+rank): p1 0.5, both 1/4 + 0.5/3 = 0.417, p2 0.333, v1 0.25
    assert [r["id"] for r in out] == ["p1", "both", "p2", "v1"]
    assert out[0]["score"] == 1.0 and all(0 < r["similarity"] <= 1 for r in out)
    by_score = merge_named(results, k=5, seen=set(), tags_of=lambda i: [], weights=MergeWeights(alpha=0.0, beta=0.0))
    assert by_score[0]["id"] == "v1"  # raw scores let the larger scale win


def test_member_mask_is_isin() -> None:
    rng = np.random.default_rng(3)
    for values, of in [
        (rng.integers(0, 50, 300), rng.integers(0, 50, 20)),
        (np.arange(5), np.zeros(0, np.int64)),
        (np.zeros(0, np.int64), np.arange(3)),
        (np.array([-1, 7, 99]), np.array([99, -1])),
    ]:
        assert np.array_equal(member_mask(values, of), np.isin(values, of))


def test_exploration_slots_go_to_items_the_lead_channel_did_not_recall() -> None:
    results = {
        "personal": [{"id": f"p{i}", "score": 1.0 - i / 100} for i in range(10)],
        "cluster": [{"id": "p0", "score": 0.5}, {"id": "c1", "score": 0.4}, {"id": "c2", "score": 0.3}],
    }
    plain = MergeWeights(alpha=0.0, beta=0.0)
    exploring = MergeWeights(alpha=0.0, beta=0.0, explore=3)
    base = [r["id"] for r in merge_named(results, k=6, seen=set(), tags_of=lambda i: [], weights=plain)]
    out = [r["id"] for r in merge_named(results, k=6, seen=set(), tags_of=lambda i: [], weights=exploring)]
    assert base == ["p0", "p1", "p2", "p3", "p4", "p5"]
    # three slots reserved, two non-personal candidates: they fill two, the lead's next best the third
    assert out == ["p0", "p1", "p2", "c1", "c2", "p3"]


def exhaustive_rerank(pool, k: int, weights: MergeWeights, categories) -> list[tuple[int, float, float]]:
    """The greedy rerank by definition: every step rescores every candidate (ties: the lower index)."""
    base = (weights.similarity * pool.similarity + weights.alpha * pool.channel_count()).tolist()
    lead = pool.where[pool.channels.index(weights.lead)] if weights.lead in pool.channels else None
    covered, out, left = set(), [], set(range(len(pool)))
    phases = [(k - weights.explore, None)]
    if weights.explore and lead is not None:
        phases.append((k, lambda i: lead[i] < 0))
    for limit, allowed in [*phases, (k, None)]:
        while len(out) < limit:
            best = None
            for i in sorted(left):
                if allowed is not None and not allowed(i):
                    continue
                tags = frozenset(categories[i])
                gain = len(tags - covered) / len(tags) if tags else 0.0
                score = base[i] + weights.beta * gain
                if best is None or score > best[1]:
                    best = (i, score, gain)
            if best is None:
                break
            out.append(best)
            left.discard(best[0])
            covered |= frozenset(categories[best[0]])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_lazy_rerank_picks_what_rescoring_everyone_picks(seed: int) -> None:
    """The rerank's shortcuts (stale bounds, exact bounds once every tag is covered) change no pick, score
    or tie order: scores on a coarse grid make many ties; some candidates have no tags, some several."""
    rng = np.random.default_rng(seed)
    channels = {}
    for channel in ("personal", "v2v", "cluster"):
        rows = rng.choice(120, size=60, replace=False)
        channels[channel] = Ranked.of(rows, np.sort(rng.integers(1, 9, size=60) / 8.0)[::-1])
    pool = union(channels)
    categories = [frozenset(rng.choice(6, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(len(pool))]
    for weights in (MergeWeights(), MergeWeights(beta=0.5, explore=10), MergeWeights(alpha=0.0, beta=1.0)):
        for k in (5, 40, len(pool)):
            picks = rerank(pool, k, weights, categories)
            assert [(p.index, p.score, p.diversity_gain) for p in picks] == exhaustive_rerank(
                pool, k, weights, categories
            )


def test_merge_weights_come_from_the_settings_and_bad_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from mmrecall.core.settings import Settings

    monkeypatch.setenv("MMRECALL_MERGE", '{"mode": "rank", "rrf_k": 10, "explore": 4, "trust": {"cluster": 0.5}}')
    weights = MergeWeights(**Settings().merge)
    assert (weights.mode, weights.rrf_k, weights.explore, weights.trust) == ("rank", 10, 4, {"cluster": 0.5})
    with pytest.raises(ValidationError, match="unknown merge fields"):
        Settings(merge={"explor": 4})
    with pytest.raises(ValidationError, match="score or rank"):
        Settings(merge={"mode": "ranked"})


def test_numpy_user_tower_matches_torch(tmp_path) -> None:
    from mmrecall.core.features import id_key
    from mmrecall.encoders.content_g import GConfig, TwoTower

    torch.manual_seed(0)
    model = TwoTower(GConfig(feature_dim=8, hidden=16, dim=8, history=5, buckets=64)).eval()
    with torch.no_grad():
        model.user_tower.recency.weight.normal_()
    path = export_user_tower(model, tmp_path / "tower.npz")
    tower = UserTowerNumpy.load(path)
    history = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1)
    mask = torch.ones(1, 5, dtype=torch.bool)
    key = id_key("user-7")
    with torch.no_grad():
        expected = model.users(history, mask, torch.tensor([key]))[0].numpy()
        without = model.users(history, mask, None)[0].numpy()
    assert np.allclose(tower(history[0].numpy(), key), expected, atol=1e-5)
    assert np.allclose(tower(history[0].numpy()), without, atol=1e-5)


def test_merge_tuning_wants_the_best_channels_hits_and_more_coverage() -> None:
    from mmrecall.recall.merge import MergeWeights
    from mmrecall.recall.tuning import pick_merge

    narrow, wide, wider_but_worse = MergeWeights(alpha=0.1), MergeWeights(alpha=0.2), MergeWeights(alpha=0.3)
    singles = {"personal": (0.30, 0.40), "cluster": (0.15, 0.70)}
    scored = [(0.34, 0.39, narrow), (0.31, 0.45, wide), (0.29, 0.60, wider_but_worse)]
    hits, coverage, weights, rule = pick_merge(scored, singles, tie=0.001)
    assert weights is wide and (hits, coverage) == (0.31, 0.45) and "coverage" in rule
    # nothing beats personal on both: the best hit rate wins
    _, _, weights, rule = pick_merge(scored[::2], singles, tie=0.001)
    assert weights is narrow and rule == "best hits"


def test_numpy_sequence_tower_matches_torch(tmp_path) -> None:
    from mmrecall.core.features import gap_buckets, id_key
    from mmrecall.encoders.content_g import GConfig, TwoTower
    from mmrecall.recall.towers import load_user_tower

    torch.manual_seed(0)
    config = GConfig(
        feature_dim=8,
        hidden=16,
        dim=8,
        history=6,
        buckets=64,
        user_tower="seq",
        interests=3,
        seq_heads=2,
        tag_vocab=("comedy", "drama"),
        dropout=0.0,
    )
    model = TwoTower(config).eval()
    active = {"user-7": np.array([True, False, True])}
    tower = load_user_tower(export_user_tower(model, tmp_path / "tower.npz", active))
    history = torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1)  # shorter than the window: padding
    padded = torch.cat([torch.zeros(1, 2, 8), history], dim=1)
    mask = torch.tensor([[False, False, True, True, True, True]])
    times = np.array([0.0, 60.0, 4000.0, 90000.0])
    gaps = torch.from_numpy(np.r_[[0, 0], gap_buckets(times)])[None]
    tags = [["comedy/dark"], ["drama"], ["comedy"], ["other"]]
    pref = tower.tag_preferences(tags)
    assert np.allclose(pref, [0.5, 0.25])
    key = id_key("user-7")
    with torch.no_grad():
        expected = model.users(padded, mask, torch.tensor([key]), gaps=gaps, tag_pref=torch.from_numpy(pref)[None])[0]
    got = tower(history[0].numpy(), key, gaps=gap_buckets(times), tag_pref=pref)
    assert got.shape == (3, 8) and np.allclose(got, expected.numpy(), atol=1e-5)
    only_active = tower(history[0].numpy(), key, gaps=gap_buckets(times), tag_pref=pref, user="user-7")
    assert np.allclose(only_active, expected.numpy()[[0, 2]], atol=1e-5)


def test_rows_stored_cluster_by_cluster_recall_the_same_items() -> None:
    """Reindex stores the snapshot's rows cluster by cluster (members are read as one slice)."""
    from mmrecall.pipeline.reindex import cluster_ordered

    x = low_rank_unit(3000)
    table = ClusterTable.build(x, k=8)
    assert not table.contiguous
    ids = [f"i{r}" for r in range(len(x))]
    ordered_ids, ordered_x, ordered = cluster_ordered(ids, x, table)
    assert ordered.contiguous and sorted(ordered_ids) == sorted(ids)
    assert all(np.array_equal(m, np.arange(m[0], m[-1] + 1)) for m in ordered.members if len(m))
    row_of = {item: r for r, item in enumerate(ordered_ids)}
    triggers = [(5, 1.0), (1234, 0.5), (2999, 0.25)]
    exclude = np.array([7, 8, 2000])
    before = cluster_recall(table, x, triggers, k=50, exclude=exclude)
    after = cluster_recall(
        ordered,
        ordered_x,
        [(row_of[ids[r]], w) for r, w in triggers],
        k=50,
        exclude=np.array([row_of[ids[r]] for r in exclude]),
    )
    assert [ordered_ids[r] for r in after.rows] == [ids[r] for r in before.rows]
    assert np.allclose(after.scores, before.scores)
    assert [ordered_ids[r] for r in after.trigger] == [ids[r] for r in before.trigger]


def test_item_meta_decodes_first_level_tags_of_many_rows_at_once(tmp_path) -> None:
    from mmrecall.index.item_meta import TOP_SET_FILES, ItemMeta

    rows = [
        (0, "zero", ["food/pizza", "food/pasta", "travel"]),
        (2, "two", None),
        (3, "drei", ["travel/rail"]),
        (1, None, ["sports/ski"]),
        (5, "five", ["food/x", "food/y"]),
        (6, "six", ["travel", "food"]),
    ]
    built = ItemMeta.build(7, rows)
    built.save(tmp_path)
    meta = ItemMeta.load(tmp_path)
    names = meta.top_level_names
    asked = np.array([3, 0, 4, 1, 2, 0, 5, 6])
    decoded = [{names[i] for i in tags} for tags in meta.top_level_sets(asked)]
    assert decoded == [
        {"travel"},
        {"food", "travel"},
        set(),
        {"sports"},
        set(),
        {"food", "travel"},
        {"food"},
        {"food", "travel"},
    ]
    assert meta.title(3) == "drei" and meta.title(1) is None and meta.tags(0) == ["food/pizza", "food/pasta", "travel"]
    assert meta.top_level_sets(np.zeros(0, np.int64)) == []
    found = meta.top_level_sets(asked)
    assert found[1] is found[5] is found[7]  # one object per distinct set: the rerank groups by them
    for name in TOP_SET_FILES:  # a snapshot written before the set numbers were stored: worked out at load
        (tmp_path / name).unlink()
    assert ItemMeta.load(tmp_path).top_level_sets(asked) == found


class CountingRows(np.ndarray):
    """The item matrix, counting how many times cluster recall reads rows from it."""

    reads = 0

    def __getitem__(self, index):
        if isinstance(index, slice | np.ndarray):
            CountingRows.reads += 1
        return np.asarray(super().__getitem__(index))


def test_cluster_recall_skips_triggers_that_cannot_reach_the_list_and_answers_the_same() -> None:
    """Recency-weighted triggers: once k items outscore what the remaining triggers could reach, the rest
    are not scanned, and the answer equals the full one (same rows, scores and triggers)."""
    rng = np.random.default_rng(4)
    x = low_rank_unit(4000)
    table = ClusterTable.build(x, k=40)
    counted = x.view(CountingRows)
    prior = rng.random(len(x))
    for decay in (0.5, 0.9, 1.0):
        triggers = [(int(r), decay**i) for i, r in enumerate(rng.choice(len(x), size=10, replace=False))]
        full = cluster_recall(table, x, triggers, k=len(x), prior=prior)
        CountingRows.reads = 0
        cut = cluster_recall(table, counted, triggers, k=20, prior=prior)
        assert cut.rows.tolist() == full.rows[:20].tolist() and cut.trigger.tolist() == full.trigger[:20].tolist()
        assert np.allclose(cut.scores, full.scores[:20])
        if decay == 0.5:  # the first triggers fill the list: most are skipped
            assert 1 <= CountingRows.reads <= 4
    # with a negative weight nothing bounds the scores: every trigger is read
    CountingRows.reads = 0
    cluster_recall(table, counted, [(0, 1.0), (5, -1.0), (9, 0.1)], k=5)
    assert CountingRows.reads == 3
