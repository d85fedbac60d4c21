"""The `sequential` channel's model at serving time, in numpy: SASRec over item ids (finetune.sasrec), trained
by `mmrecall train --sequential` beside G and written into the snapshot by the reindex, with each snapshot
row's id in the model (`row_ids`, -1 for an item it never saw: a new item, which the content channels carry).

A history (snapshot rows, oldest first) -> the ids of the items the model knows, the latest `max_len` ->
the last position's hidden state -> its inner product with every known item's embedding, exactly (one
matrix-vector product: about 0.1 ms per 10,000 items). The history is fed without padding: the model was
trained with padded slots masked out of attention, so both give the same state.
"""

from __future__ import annotations

import numpy as np

from mmrecall.index.ranked import top_rows
from mmrecall.recall.towers import transformer_blocks


class SequentialModel:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.a = arrays
        self.layers, self.heads = int(arrays["layers"]), int(arrays["heads"])
        self.max_len, self.dim = arrays["positions"].shape[0], arrays["items"].shape[1]
        self.row_ids = np.asarray(arrays["row_ids"], np.int64)  # (n,) snapshot row -> model id, -1 unknown
        self.known = self.row_ids >= 0  # (n,)
        self.table = np.zeros((len(self.row_ids), self.dim), np.float32)  # (n, d): item embeddings by row
        self.table[self.known] = arrays["items"][self.row_ids[self.known] + 1]  # the model's row 0 is padding

    def __len__(self) -> int:
        return len(self.row_ids)

    def user_vector(self, rows: np.ndarray) -> np.ndarray | None:
        """History rows (snapshot rows, oldest first) -> the model's next-item query (d,); None when the model
        knows none of them."""
        rows = np.asarray(rows, np.int64)
        ids = self.row_ids[rows[(rows >= 0) & (rows < len(self.row_ids))]]
        ids = ids[ids >= 0][-self.max_len :]
        if not len(ids):
            return None
        a = self.a
        x = a["items"][ids + 1] * np.float32(self.dim**0.5) + a["positions"][-len(ids) :]  # (L, d)
        return transformer_blocks(x.astype(np.float32), a, self.layers, self.heads)[-1]

    def search(self, vector: np.ndarray, n: int, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The n best known rows for a query, best first; blocked: (n_rows,) bool, rows never returned."""
        scores = self.table @ np.asarray(vector, np.float32)  # (n_rows,)
        candidates = np.flatnonzero(self.known & ~blocked)
        return top_rows(candidates, scores[candidates], n)
