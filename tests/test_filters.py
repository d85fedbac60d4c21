"""Query-time filters over HTTP on the real worker, Redis and database: each filter alone and combined, on
/v1/recall (every channel) and /v1/similar (both channels), items newer than the snapshot included, and
bad filters refused with a reason."""

from __future__ import annotations

import time

import pytest

from tests.helpers import Service

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

TOPICS = {  # tag -> title words: the tiny encoder's vectors follow the titles
    "food/noodles": "noodle soup",
    "food/cake": "chocolate cake",
    "sports/tennis": "tennis serve",
    "sports/golf": "golf swing",
}
N = 40


def item(i: int) -> dict:
    tag = list(TOPICS)[i % 4]
    return {"id": f"f{i}", "title": f"{TOPICS[tag]} {i}", "tags": [tag], "created_at": 1000.0 + i}


@pytest.fixture(scope="module")
def catalogue(service: Service) -> Service:
    # behaviour on the first 12 items only: the rest are new
    rows = [{"user_id": f"u{u}", "item_id": f"f{i}", "timestamp": 100 + i} for u in range(3) for i in range(12)]
    service.serve_catalogue([item(i) for i in range(N)], rows)
    return service


def recall(service: Service, **body) -> dict:
    response = service.http.post("/v1/recall", json={"history": ["f0", "f1", "f2"], "k": 10, **body})
    assert response.status_code == 200, response.text
    return response.json()


def tags_of(answer: dict) -> list[str]:
    return [item(int(r["id"][1:]))["tags"][0] for r in answer["results"]]


def test_each_filter_alone(catalogue: Service) -> None:
    food = recall(catalogue, include_tags=["food"])  # a first-level tag matches its second-level ones
    assert len(food["results"]) == 10 and food["short_by"] == 0
    assert {t.split("/")[0] for t in tags_of(food)} == {"food"}
    assert set(tags_of(food)) == {"food/noodles", "food/cake"}
    assert food["filter"] == {"include_tags": ["food"], "allowed": N // 2}

    cake = recall(catalogue, include_tags=["food/cake"])
    assert set(tags_of(cake)) == {"food/cake"} and len(cake["results"]) == 10 - 1  # f1 is cake and seen

    no_sports = recall(catalogue, exclude_tags=["sports"])
    assert not any(t.startswith("sports") for t in tags_of(no_sports)) and len(no_sports["results"]) == 10

    unfiltered = [r["id"] for r in recall(catalogue)["results"]]
    dropped = unfiltered[:3]
    without = [r["id"] for r in recall(catalogue, exclude_ids=dropped)["results"]]
    assert not set(dropped) & set(without) and len(without) == 10

    late = recall(catalogue, created_after=1030.0)
    assert late["results"] and all(item(int(r["id"][1:]))["created_at"] > 1030 for r in late["results"])
    assert len(late["results"]) == 9 and late["short_by"] == 1  # f31..f39: fewer than k pass, and it says so
    early = recall(catalogue, created_before=1010.0)
    assert {r["id"] for r in early["results"]} == {f"f{i}" for i in range(3, 10)}

    new = recall(catalogue, new_only=True)
    assert new["results"] and all(int(r["id"][1:]) >= 12 for r in new["results"])


def test_filters_combined_inside_every_channel(catalogue: Service) -> None:
    body = {
        "include_tags": ["food", "sports/golf"],
        "exclude_tags": ["food/cake"],
        "exclude_ids": ["f12", "f15"],
        "created_after": 1003.0,
        "new_only": True,
    }
    allowed = {
        f"f{i}"
        for i in range(12, N)
        if item(i)["tags"][0] in ("food/noodles", "sports/golf") and f"f{i}" not in ("f12", "f15")
    }
    for channel in ("v2v", "cluster", "personal", "u2i2i", "multi_interest"):
        answer = recall(catalogue, channels=[channel], k=30, **body)
        found = {r["id"] for r in answer["results"]}
        assert found and found <= allowed, (channel, found - allowed)
        assert all(r["channels"] == [channel] for r in answer["results"])
    merged = recall(catalogue, k=len(allowed), **body)
    assert {r["id"] for r in merged["results"]} == allowed and merged["short_by"] == 0


def test_similar_filters(catalogue: Service) -> None:
    http = catalogue.http
    for channel in ("v2v", "cluster"):
        params = {"k": 5, "channel": channel, "include_tags": ["sports/golf"], "exclude_ids": ["f7"]}
        answer = http.get("/v1/similar/f0", params=params)
        assert answer.status_code == 200, answer.text
        found = [r["id"] for r in answer.json()["results"]]
        assert found and all(item(int(i[1:]))["tags"] == ["sports/golf"] for i in found) and "f7" not in found
    both = http.get("/v1/similar/f0", params={"k": 50, "include_tags": ["food", "sports"]}).json()
    assert len(both["results"]) == N - 1 and both["short_by"] == 50 - (N - 1)


def test_items_newer_than_the_snapshot_are_filtered_from_the_database(catalogue: Service) -> None:
    http = catalogue.http
    fresh = [{"id": "fx1", "title": "noodle soup fresh", "tags": ["food/noodles"], "created_at": 5000.0}]
    fresh.append({"id": "fx2", "title": "noodle soup golf", "tags": ["sports/golf"], "created_at": 5000.0})
    http.post("/v1/items", json={"items": fresh})
    catalogue.wait_items(["fx1", "fx2"])
    deadline = time.time() + 10
    while "fx1" not in {r["id"] for r in http.get("/v1/similar/f0", params={"k": 60}).json()["results"]}:
        assert time.time() < deadline
        time.sleep(0.2)
    golf = {r["id"] for r in recall(catalogue, include_tags=["sports/golf"], k=30, channels=["v2v"])["results"]}
    assert "fx2" in golf and "fx1" not in golf
    after = {r["id"] for r in recall(catalogue, created_after=4000.0, k=5)["results"]}
    assert after == {"fx1", "fx2"}


BAD_FILTERS = [  # (body fields, words the 4xx reason must contain)
    ({"include_tags": ["a/b/c"]}, "pattern"),
    ({"include_tags": [""]}, "at least 1"),
    ({"exclude_tags": ["food/"]}, "pattern"),
    ({"include_tags": [" food"]}, "pattern"),
    ({"include_tags": ["food"], "exclude_tags": ["food"]}, "both included and excluded"),
    ({"created_after": 2000.0, "created_before": 1000.0}, "earlier than"),
    ({"created_after": "soon"}, "valid number"),
    ({"include_tags": "food"}, "valid list"),
    ({"exclude_ids": [""]}, "at least 1"),
    ({"exclude_ids": ["x" * 200]}, "at most 128"),
    ({"include_tags": [f"t{i}" for i in range(101)]}, "at most 100"),
    ({"new_only": "perhaps"}, "valid boolean"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_FILTERS)
def test_bad_filters_are_refused_with_a_reason(catalogue: Service, fields: dict, reason: str) -> None:
    response = catalogue.http.post("/v1/recall", json={"history": ["f0"], **fields})
    assert response.status_code == 422 and reason in response.text, response.text
    params = {k: v for k, v in fields.items() if not isinstance(v, str) or k != "include_tags"}
    if params:
        similar = catalogue.http.get("/v1/similar/f0", params=params)
        assert similar.status_code == 422 and reason in similar.text, similar.text


def test_filtered_scan_matches_brute_force() -> None:
    """The scan behind a selective filter (recall.filters.AllowedRows): half-precision codes order the
    snapshot's allowed rows, exact float scores decide; with the delta's rows scanned beside them, each answer
    is the exact top n over allowed rows (exact scores), without excluded rows or rows whose mask was cleared."""
    import numpy as np

    from mmrecall.recall.filters import AllowedRows, SnapshotRows

    rng = np.random.default_rng(3)
    base, delta, d = 2000, 30, 16
    vectors = rng.normal(size=(base + delta, d)).astype(np.float32)
    snapshot_mask = rng.random(base) < 0.3
    snapshot = SnapshotRows.gathered(snapshot_mask, vectors[:base][snapshot_mask])
    delta_mask = rng.random(delta) < 0.5
    mask = np.concatenate([snapshot_mask, delta_mask])
    cleared = np.flatnonzero(mask)[[0, 7]]  # exclude_ids clear the mask after the snapshot part was cached
    mask[cleared] = False
    delta_rows = base + np.flatnonzero(delta_mask)
    allowed = AllowedRows(mask, snapshot, delta_rows, vectors[delta_rows])
    allowed_rows = np.flatnonzero(mask)

    def brute(query: np.ndarray, n: int, skip: np.ndarray) -> list[int]:
        scores = vectors @ query
        scores[~mask] = -np.inf
        scores[skip[skip < len(scores)]] = -np.inf
        order = np.argsort(-scores, kind="stable")[:n]
        return [int(r) for r in order if np.isfinite(scores[r])]

    queries = vectors[[int(allowed_rows[5]), base + 3, 42]]
    for n in (20, 200):
        # the best allowed rows excluded: the scan must reach past them
        exclude = np.concatenate([np.array(brute(queries[0], 40, np.zeros(0, np.int64))), delta_rows[:2], [999_999]])
        for query, (rows, scores) in zip(queries, allowed.search(queries, n, exclude), strict=True):
            assert rows.tolist() == brute(query, n, exclude)
            assert np.allclose(scores, vectors[rows] @ query, atol=1e-5)  # exact, not half-precision, scores


def test_interests_under_a_selective_filter_share_one_scan_and_answer_as_one_search_each() -> None:
    """PinnerSage's per-interest searches (ServiceSources.nearest_each) under a selective filter run as one
    scan for every interest; each list must be what its own search answers once the earlier lists' items
    are excluded, as without the filter."""
    import numpy as np

    from mmrecall.index.ann import VectorIndex
    from mmrecall.index.live import LiveIndex
    from mmrecall.recall.filters import AllowedRows, SnapshotRows
    from mmrecall.recall.serving import ServiceSources, ServingState

    rng = np.random.default_rng(5)
    n, d = 3000, 16
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    state = ServingState(LiveIndex(VectorIndex.build([f"i{r}" for r in range(n)], vectors)))
    mask = rng.random(n) < 0.1
    filtered = AllowedRows(mask, SnapshotRows.gathered(mask, vectors[mask]), np.zeros(0, np.int64), vectors[:0])
    sources = ServiceSources(state, "sqlite://", in_memory_only=True, filtered=filtered)
    assert filtered.exact
    medoids = [int(r) for r in np.flatnonzero(mask)[:4]]
    queries = vectors[medoids] + 0.05 * vectors[medoids[::-1]]  # neighbouring interests: their lists overlap
    wanted = [40, 25, 20, 15]
    seen = np.array(sorted(medoids[:2]), np.int64)
    lists = sources.nearest_each(medoids, queries, wanted, seen)
    exclude = seen
    for (rows, scores), query, count in zip(lists, queries, wanted, strict=True):
        expected_rows, expected_scores = sources.search(query, count, exclude)
        assert rows.tolist() == expected_rows.tolist() and np.allclose(scores, expected_scores)
        assert len(rows) == count and mask[rows].all()
        exclude = np.concatenate([exclude, rows])
    assert len(np.unique(np.concatenate([rows for rows, _ in lists]))) == sum(wanted)  # each item once


def test_a_filter_in_use_is_scanned_by_fast_codes_built_in_the_background() -> None:
    """A selective filter's rows are first ordered by half-precision codes (exact answers); once the filter
    is in use, 4-bit fast-scan codes built in a background thread take over, and the exactly rescored
    shortlist still finds nearly all of the exact top n, never an excluded or disallowed row."""
    import numpy as np

    from mmrecall.recall.filters import FAST_AFTER_USES, FAST_MIN_ROWS, AllowedRows, SnapshotRows

    rng = np.random.default_rng(4)
    d = 32
    vectors = rng.normal(size=(20_000, 8)) @ rng.normal(size=(8, d)) + 0.3 * rng.normal(size=(20_000, d))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    mask = rng.random(len(vectors)) < 0.4
    assert mask.sum() >= FAST_MIN_ROWS
    snapshot = SnapshotRows.gathered(mask, vectors[mask])
    allowed = AllowedRows(mask, snapshot, np.zeros(0, np.int64), vectors[:0])
    queries = vectors[rng.integers(len(vectors), size=50)]
    exclude = np.flatnonzero(mask)[::7]

    def exact(query: np.ndarray, n: int) -> set[int]:
        scores = vectors @ query
        scores[~mask] = -np.inf
        scores[exclude] = -np.inf
        return set(np.argsort(-scores, kind="stable")[:n].tolist())

    for _ in range(FAST_AFTER_USES):
        first = allowed.search(queries, 100, exclude)
    assert all(set(rows.tolist()) == exact(q, 100) for q, (rows, _) in zip(queries, first, strict=True))
    deadline = time.time() + 30
    while snapshot.fast is None:
        assert time.time() < deadline, "the fast-scan codes were not built"
        time.sleep(0.05)
    found = allowed.search(queries, 100, exclude)
    overlap = [len(set(rows.tolist()) & exact(q, 100)) / 100 for q, (rows, _) in zip(queries, found, strict=True)]
    assert np.mean(overlap) >= 0.95, np.mean(overlap)
    for query, (rows, scores) in zip(queries, found, strict=True):
        assert len(rows) == 100 and mask[rows].all() and not np.isin(rows, exclude).any()
        assert np.allclose(scores, vectors[rows] @ query, atol=1e-5) and (np.diff(scores) <= 1e-12).all()
