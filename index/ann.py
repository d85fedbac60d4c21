"""An immutable inner-product index over L2-normalized vectors, described by a faiss factory string."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from mmrecall.index.store import VectorStore

# a saved index's files (mmrecall.storage.snapshots lists them with the rest of a snapshot):
# float32 (n, d) unit rows, the faiss index over them (none when a vector store answers the searches: then
# index.json names its collection), the ids in row order, factory and search breadth
STORE_FACTORY = "store"  # the factory recorded for an index whose searches a vector store answers
FILES = {"vectors": "vectors.npy", "ann": "index.faiss", "ids": "ids.json", "info": "index.json"}

HNSW_EF_SEARCH = 512  # recall@100 >= 0.95 at 1M low-rank vectors (0.946 at 256); snapshots tune their own
EF_LADDER = (100, 128, 144, 160, 176, 192, 224, 256, 320, 384, 512, 768, 1024)  # efSearch tried, cheapest first
# Graph quality at build time (faiss's default is 40). At 1M low-rank vectors, HNSW32,SQ8, one query each:
# 80 reaches recall@100 0.962 at efSearch 160 (1.04 ms) where 40 needs 192 (0.969, 1.25 ms; 0.955 at 160);
# the build takes ~1.5x as long (294 s against ~200 s on 2 cores).
HNSW_EF_CONSTRUCTION = 80
IVF_NPROBE = 32
# faiss's flat search takes a slow non-BLAS path for small batches (measured at 100k x 256, one query:
# 6.8 ms in faiss, 2.4 ms as a numpy product + partial sort); few queries go through numpy instead
NUMPY_FLAT_MAX_QUERIES = 8
STORE_WRITE_BATCH = 20_000  # vectors per upsert when a reindex writes a store collection


def choose_factory(n: int, spec: str = "auto", *, exact_below: int = 20_000) -> str:
    """'auto': exact search while it is fast enough, HNSW above that; any other string is used as given.

    The HNSW graph links 8-bit codes, not float vectors: a search walks a quarter of the memory (1M x 256,
    one query, recall@100 against exact search at efSearch 224: 1.12 ms and 0.976, against 1.74 ms and
    0.979 with float storage), each process holds a quarter of the copy, and the scores it returns are
    recomputed exactly from the float vectors (`VectorIndex.search`)."""
    if spec != "auto":
        return spec
    return "Flat" if n < exact_below else "HNSW32,SQ8"


def as_matrix(vectors: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a (n, d) matrix, got shape {matrix.shape}")
    return matrix


FILTER_MAX_WIDENING = 64  # a filtered search that finds too few widens its breadth 4x at a time, this far at most


class VectorIndex:
    """Rows are positions; `ids[pos]` is the item id. Scores are inner products (cosine on unit vectors).

    The nearest-neighbour searches run on a faiss index in process, or on a collection of a vector store
    (`index.store`: Milvus by URL) holding the same ids and vectors; the float rows stay here either way
    (the v2v table, exact rescoring and the filtered scans read them by row)."""

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        index: faiss.Index | None,
        factory: str,
        ef_search: int = HNSW_EF_SEARCH,
        *,
        store: VectorStore | None = None,
        collection: str | None = None,
    ) -> None:
        if (index is None) == (store is None):
            raise ValueError("a VectorIndex searches a faiss index or a store collection: exactly one")
        self.ids = list(ids)
        self.vectors = vectors  # (n, d), possibly memory-mapped
        self.index = index
        self.factory = factory
        self.store, self.collection = store, collection
        self.position = {item_id: pos for pos, item_id in enumerate(self.ids)}
        self.ef_search = ef_search
        # False: quantised codes, rescored from `vectors` (a store's scores are its own inner products)
        self.exact_scores = index is None or _scores_exactly(index)
        if index is not None:
            _tune(index, ef_search)

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, factory: str = "Flat") -> VectorIndex:
        matrix = as_matrix(vectors)
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        index = faiss.index_factory(matrix.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if not index.is_trained:
            index.train(matrix)
        index.add(matrix)
        return cls(ids, matrix, index, factory)

    @classmethod
    def in_store(
        cls, store: VectorStore, collection: str, ids: Sequence[str], vectors: np.ndarray, *, progress=None
    ) -> VectorIndex:
        """Write the ids and vectors into a new collection of the store and search there: the index a
        reindex builds when a vector store holds the vectors (the collection is dropped if writing fails)."""
        matrix = as_matrix(vectors)
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        store.create(collection, matrix.shape[1])
        try:
            for start in range(0, len(ids), STORE_WRITE_BATCH):
                end = start + STORE_WRITE_BATCH
                store.upsert(collection, ids[start:end], matrix[start:end])
                if progress:
                    progress(min(end, len(ids)), len(ids))
            store.search(collection, matrix[:1], 1)  # builds and loads its index: searchable before it is named
            if store.count(collection) != len(ids):
                raise RuntimeError(f"collection {collection} holds {store.count(collection)} of {len(ids)} vectors")
        except BaseException:
            store.drop(collection)
            raise
        return cls(ids, matrix, None, STORE_FACTORY, store=store, collection=collection)

    def tune_search(self, target_recall: float, *, queries: int = 200, k: int = 100, seed: int = 0) -> dict:
        """HNSW: set the serving breadth to the smallest efSearch (EF_LADDER) whose recall@k against exact
        search reaches the target on user-like queries (the mean of 20 random items: a user vector blends
        the items they liked). The breadth an index needs depends on its size and data; a fixed one is
        either slow or short. A store collection searches at the store's own breadth: its recall@k on the
        same queries is measured and reported."""
        if self.store is not None and len(self) > k:
            sample, exact = self._user_like_queries(20, queries, k, seed)
            _, found = self.search(sample, k)
            return {f"ann_recall_at_{k}": round(_recall(found, exact, k), 4)}
        if not self.is_hnsw or len(self) <= k:
            return {}
        ef, recall = self.search_breadth(target_recall, queries=queries, k=k, seed=seed)
        self.ef_search = ef
        _tune(self.faiss_index, ef)
        return {"ef_search": ef, f"ann_recall_at_{k}": round(recall, 4)}

    def search_breadth(
        self, target_recall: float, *, blend: int = 20, queries: int = 200, k: int = 100, seed: int = 0
    ) -> tuple[int, float]:
        """(efSearch, its recall@k): the smallest breadth on EF_LADDER that reaches the target on queries that
        are each the mean of `blend` random items (1: the items themselves, as the v2v table asks)."""
        sample, exact = self._user_like_queries(blend, queries, k, seed)
        for ef in EF_LADDER:
            _, found = self.faiss_index.search(sample, k, params=faiss.SearchParametersHNSW(efSearch=max(ef, k)))  # type: ignore[attr-defined]
            recall = _recall(found, exact, k)
            if recall >= target_recall:
                break
        return max(ef, k), recall  # faiss needs efSearch >= k

    def _user_like_queries(self, blend: int, queries: int, k: int, seed: int) -> tuple[np.ndarray, list[set]]:
        """(queries, d) unit means of `blend` random rows each, and each one's exact top-k rows."""
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.integers(len(self), size=(queries, blend)), axis=1)  # sorted: mapped pages in order
        sample = np.stack([np.asarray(self.vectors[row], np.float32).mean(axis=0) for row in picks])
        sample /= np.linalg.norm(sample, axis=1, keepdims=True)
        return sample, [set(row) for row in _exact_top_k_chunked(self.vectors, sample, k)]

    def _filter_params(self, selector: faiss.IDSelector, k: int, breadth: int = 1) -> faiss.SearchParameters:
        """The index kind's search parameters with the selector, at `breadth` times the breadth it serves with."""
        if self.is_hnsw:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k) * breadth)  # type: ignore[attr-defined]
        try:
            ivf = faiss.extract_index_ivf(self.faiss_index)
        except RuntimeError:  # not an IVF index
            return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(ivf.nprobe * breadth, ivf.nlist))  # type: ignore[call-arg]

    @property
    def faiss_index(self) -> faiss.Index:
        """The faiss index (an index whose searches a store answers has none)."""
        if self.index is None:
            raise TypeError(f"collection {self.collection!r} is searched in a vector store, not by faiss")
        return self.index

    @property
    def is_hnsw(self) -> bool:
        return isinstance(self.index, faiss.IndexHNSW)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def vector(self, item_id: str) -> np.ndarray | None:
        pos = self.position.get(item_id)
        return None if pos is None else np.asarray(self.vectors[pos], dtype=np.float32)

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each (q, k), best first; position -1 where fewer than k exist.
        allowed: a boolean mask over positions, the only ones returned, applied inside the search (faiss's
        ID selector), so a narrow filter still fills k where that many pass it."""
        k = max(1, min(k, len(self.ids)))
        queries = as_matrix(queries)
        if self.store is not None:
            return self._store_search(queries, k, allowed)
        if allowed is not None:
            return self._filtered(queries, k, np.asarray(allowed, bool))
        if self.factory == "Flat" and len(queries) <= NUMPY_FLAT_MAX_QUERIES:
            return _exact_top_k(self.vectors, queries, k)
        scores, positions = self.faiss_index.search(queries, k)
        return (scores, positions) if self.exact_scores else self._rescored(queries, positions)

    def _store_search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The store's hits as (scores, positions) in this index's rows (ids it holds that these rows do not
        are dropped: none, for the collection a reindex wrote beside them)."""
        assert self.store is not None and self.collection is not None
        allowed_ids = None if allowed is None else [self.ids[i] for i in np.flatnonzero(allowed)]
        hits = self.store.search(self.collection, queries, k, allowed=allowed_ids)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        positions = np.full((len(queries), k), -1, np.int64)
        for row, found in enumerate(hits):
            known = [(self.position[i], s) for i, s in found if i in self.position][:k]
            if known:
                positions[row, : len(known)] = [p for p, _ in known]
                scores[row, : len(known)] = [s for _, s in known]
        return scores, positions

    def _filtered(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.factory == "Flat":
            scores = queries @ np.asarray(self.vectors).T  # (q, n)
            scores[:, ~allowed] = -np.inf
            found_scores, positions = _exact_top_k_scores(scores, k)
        else:
            bits = np.packbits(allowed, bitorder="little")  # kept alive while faiss reads it
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            wanted, breadth = min(k, int(allowed.sum())), 1
            while True:
                params = self._filter_params(selector, k, breadth)
                found_scores, positions = self.faiss_index.search(queries, k, params=params)
                # a filtered graph walk or probe can end short of k allowed items: widen until it does not
                if (positions >= 0).sum(axis=1).min() >= wanted or breadth >= FILTER_MAX_WIDENING:
                    break
                breadth *= 4
            if not self.exact_scores:
                found_scores, positions = self._rescored(queries, positions)
        positions = np.where(np.isfinite(found_scores), positions, -1)
        return found_scores, positions

    def _rescored(self, queries: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the found positions from the float vectors, re-sorted (a quantised
        index's own scores are off by its rounding)."""
        found = np.asarray(self.vectors[np.maximum(positions, 0).reshape(-1)], np.float32)
        scores = np.einsum("qkd,qd->qk", found.reshape(*positions.shape, -1), queries)
        scores[positions < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / FILES["vectors"], self.vectors)
        if self.index is not None:
            faiss.write_index(self.index, str(directory / FILES["ann"]))
        (directory / FILES["ids"]).write_text(json.dumps(self.ids))
        info = {"factory": self.factory, "count": len(self.ids), "ef_search": self.ef_search}
        if self.store is not None:
            info["collection"] = self.collection
        (directory / FILES["info"]).write_text(json.dumps(info))

    @classmethod
    def load(cls, directory: Path, *, store: VectorStore | None = None) -> VectorIndex:
        """store: the vector store that answers an index saved from one (`checked_collection`)."""
        ids = json.loads((directory / FILES["ids"]).read_text())
        meta = json.loads((directory / FILES["info"]).read_text())
        vectors = np.asarray(np.load(directory / FILES["vectors"], mmap_mode="r"))  # an ndarray view of the map
        collection = checked_collection(directory, store)
        if collection is None:
            index = faiss.read_index(str(directory / FILES["ann"]))
            return cls(ids, vectors, index, meta["factory"], meta.get("ef_search", HNSW_EF_SEARCH))
        return cls(ids, vectors, None, meta["factory"], store=store, collection=collection)


def checked_collection(directory: Path, store: VectorStore | None) -> str | None:
    """The store collection a saved index is searched in (None: its own faiss index), once it is known to
    answer there: StoreError where no store is given, the collection is missing or holds vectors of another
    dimension. `mmrecall serve` asks before it starts; the API before it serves a snapshot."""
    collection = json.loads((directory / FILES["info"]).read_text()).get("collection")
    if collection is None:
        return None
    from mmrecall.index.store import StoreError  # the store module imports this one

    if store is None:
        raise StoreError(
            f"snapshot {directory.name} is searched in the vector-store collection {collection!r}, and no "
            "vector store is configured: set MMRECALL_VECTOR_STORE to the store its reindex wrote to"
        )
    dim = np.load(directory / FILES["vectors"], mmap_mode="r").shape[1]
    if store.dim(collection) != dim:  # StoreError where the collection is missing
        raise StoreError(
            f"collection {collection!r} holds {store.dim(collection)}-dimensional vectors; snapshot "
            f"{directory.name} has {dim}: run `mmrecall reindex`"
        )
    return collection


def _exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by one matrix product and a partial sort."""
    return _exact_top_k_scores(queries @ np.asarray(vectors).T, k)


def _exact_top_k_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of each row's k best columns of a (q, n) score matrix, best first."""
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    picked = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1), np.take_along_axis(top, order, axis=1).astype(np.int64)


def _exact_top_k_chunked(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """(q, k) exact top-k positions, best first, reading the (possibly memory-mapped) matrix in chunks:
    each chunk's top k (`_exact_top_k`), kept merged with the best so far."""
    kept_scores = np.zeros((len(queries), 0), np.float32)
    kept_rows = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start : start + chunk], np.float32)
        scores, rows = _exact_top_k(block, queries, min(k, len(block)))
        kept_scores = np.concatenate([kept_scores, scores], axis=1)
        kept_rows = np.concatenate([kept_rows, rows + start], axis=1)
        best = np.argsort(-kept_scores, axis=1, kind="stable")[:, :k]
        kept_scores = np.take_along_axis(kept_scores, best, axis=1)
        kept_rows = np.take_along_axis(kept_rows, best, axis=1)
    return kept_rows


def _recall(found: np.ndarray, exact: list[set], k: int) -> float:
    return float(np.mean([len(set(f) & t) / k for f, t in zip(found, exact, strict=True)]))


def _scores_exactly(index: faiss.Index) -> bool:
    """Whether the index compares float vectors (flat storage), so its scores are exact inner products."""
    if isinstance(index, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(index.storage), faiss.IndexFlat)
    return isinstance(index, faiss.IndexFlat | faiss.IndexIVFFlat)


def _tune(index: faiss.Index, ef_search: int = HNSW_EF_SEARCH) -> None:
    """Search-time parameters are not stored with the faiss index; set them after build and load."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search
        return
    try:
        faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
    except RuntimeError:
        pass  # not an IVF index
