"""An immutable inner-product index over L2-normalized vectors, described by a faiss factory string."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

HNSW_EF_SEARCH = 512  # recall@100 >= 0.95 at 1M low-rank vectors (0.946 at 256)
IVF_NPROBE = 32


def choose_factory(n: int, spec: str = "auto", *, exact_below: int = 200_000) -> str:
    """'auto': exact search while it is fast enough, HNSW above that; any other string is used as given."""
    if spec != "auto":
        return spec
    return "Flat" if n < exact_below else "HNSW32,Flat"


def as_matrix(vectors: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a (n, d) matrix, got shape {matrix.shape}")
    return matrix


class VectorIndex:
    """Rows are positions; `ids[pos]` is the item id. Scores are inner products (cosine on unit vectors)."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, index: faiss.Index, factory: str) -> None:
        self.ids = list(ids)
        self.vectors = vectors  # (n, d), possibly memory-mapped
        self.index = index
        self.factory = factory
        self.position = {item_id: pos for pos, item_id in enumerate(self.ids)}

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, factory: str = "Flat") -> VectorIndex:
        matrix = as_matrix(vectors)
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        index = faiss.index_factory(matrix.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(matrix)
        index.add(matrix)
        _tune(index)
        return cls(ids, matrix, index, factory)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def vector(self, item_id: str) -> np.ndarray | None:
        pos = self.position.get(item_id)
        return None if pos is None else np.asarray(self.vectors[pos], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each (q, k), best first; position -1 where fewer than k exist."""
        k = max(1, min(k, len(self.ids)))
        return self.index.search(as_matrix(queries), k)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", self.vectors)
        faiss.write_index(self.index, str(directory / "index.faiss"))
        (directory / "ids.json").write_text(json.dumps(self.ids))
        (directory / "index.json").write_text(json.dumps({"factory": self.factory, "count": len(self.ids)}))

    @classmethod
    def load(cls, directory: Path) -> VectorIndex:
        ids = json.loads((directory / "ids.json").read_text())
        meta = json.loads((directory / "index.json").read_text())
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        index = faiss.read_index(str(directory / "index.faiss"))
        _tune(index)
        return cls(ids, vectors, index, meta["factory"])


def _tune(index: faiss.Index) -> None:
    """Search-time parameters are not stored with the index; set them after build and load."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return
    try:
        faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
    except RuntimeError:
        pass  # not an IVF index
