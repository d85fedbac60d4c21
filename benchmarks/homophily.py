"""`mmrecall bench homophily --dataset DIR --encoders a,b`: does an encoder split the catalogue by whether
items have a cover? For items with a cover and items without, the share of their 10 nearest neighbours
(exact cosine search over the whole catalogue) that have a cover, per encoder. An encoder that compares
content, not the presence of a cover, gives shares close to the text-only encoder's."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from mmrecall.benchmarks.common import table, write_result
from mmrecall.core.dataset import load_dataset
from mmrecall.encoders.dataset import encode_dataset

NEIGHBOURS = 10
ENCODERS = ("text-minilm", "text-effnet")


def cover_shares(vectors: np.ndarray, has_cover: np.ndarray, k: int = NEIGHBOURS) -> dict[str, float]:
    """{"with_cover", "without_cover"}: the mean share of an item's k nearest others that have a cover."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    _, found = index.search(np.ascontiguousarray(vectors, np.float32), k + 1)
    rows = np.arange(len(vectors))[:, None]
    others = np.where(found == rows, -1, found)  # the item itself is not its neighbour
    share = np.array([has_cover[row[row >= 0][:k]].mean() for row in others])
    return {
        "with_cover": round(float(share[has_cover].mean()), 4),
        "without_cover": round(float(share[~has_cover].mean()), 4),
    }


def run(out: Path, dataset: Path | None = None, encoders: str | None = None, **_kw) -> dict:
    if dataset is None:
        raise ValueError("bench homophily needs --dataset DIR (a dataset in the interchange format)")
    data = load_dataset(dataset)
    has_cover = np.array([item.cover is not None for item in data.items])
    result: dict = {"dataset": str(dataset), "items": data.n_items, "with_cover": int(has_cover.sum()), "rows": []}
    for name in encoders.split(",") if encoders else ENCODERS:
        vectors = encode_dataset(data, name, cache=out / "cache")
        result["rows"].append({"encoder": name, **cover_shares(vectors, has_cover)})
    print(f"{result['with_cover']} of {result['items']} items have a cover ({result['with_cover'] / data.n_items:.1%})")
    print(table(result["rows"], ["encoder", "with_cover", "without_cover"]))
    write_result(out, "homophily", result)
    return result
