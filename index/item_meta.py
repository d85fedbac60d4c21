"""Titles and tags of a snapshot's rows, stored beside the index and memory-mapped when served.

The query paths (`/v1/similar`, `/v1/recall`) need a title per result and tags for the diversity term
of the rerank. Reading them from the database costs a round trip per request; from these arrays it
costs a slice. Items written after the snapshot are not here: callers ask the database for those.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

FILES = ("meta-titles.bin", "meta-title-spans.npy", "meta-tag-offsets.npy", "meta-tag-codes.npy", "meta-tags.json")
# each row's set of first-level tags as a number into a list of the distinct sets (computed at load for a
# snapshot without these files)
TOP_SET_FILES = ("meta-top-sets.npy", "meta-top-sets.json")


class ItemMeta:
    def __init__(
        self,
        blob: np.ndarray,
        title_spans: np.ndarray,
        tag_offsets: np.ndarray,
        tag_codes: np.ndarray,
        vocabulary: Sequence[str],
        top_sets: tuple[np.ndarray, list[list[int]]] | None = None,
    ) -> None:
        self.blob = blob  # uint8: every title's UTF-8 bytes, back to back
        self.title_spans = title_spans  # (n, 2) int64 start, end in blob; start -1: no title
        self.tag_offsets = tag_offsets  # (n + 1,) int64 into tag_codes
        self.tag_codes = tag_codes  # int32 codes into vocabulary
        self.vocabulary = list(vocabulary)
        # first-level tags as small ints: the rerank compares sets of them for every candidate
        self.top_level_names = list(dict.fromkeys(tag.split("/")[0] for tag in self.vocabulary))
        self.top_level_index = {name: i for i, name in enumerate(self.top_level_names)}
        self.code_top = np.array([self.top_level_index[t.split("/")[0]] for t in self.vocabulary], np.int64)
        # the rerank groups candidates by these sets: one shared frozenset per distinct set, looked up by row
        self.top_set_ids, distinct = top_sets if top_sets is not None else self._top_level_set_ids()
        self.top_sets = [frozenset(tops) for tops in distinct]

    def _top_level_set_ids(self) -> tuple[np.ndarray, list[list[int]]]:
        """(each row's number into the distinct sets, the distinct sets of first-level tags, sorted)."""
        lengths = np.diff(self.tag_offsets)
        tops = self.code_top[self.tag_codes]
        numbers: dict[tuple[int, ...], int] = {(): 0}
        ids = np.zeros(len(lengths), np.int32)
        one = np.flatnonzero(lengths == 1)  # most items: one tag, so a singleton, numbered without a row loop
        if len(one):
            top_of_one = tops[self.tag_offsets[one]]
            distinct = np.unique(top_of_one)
            lookup = np.array([numbers.setdefault((t,), len(numbers)) for t in distinct.tolist()], np.int32)
            ids[one] = lookup[np.searchsorted(distinct, top_of_one)]
        offsets = self.tag_offsets.tolist()
        for pos in np.flatnonzero(lengths > 1).tolist():
            key = tuple(sorted(set(tops[offsets[pos] : offsets[pos + 1]].tolist())))
            ids[pos] = numbers.setdefault(key, len(numbers))
        return ids, [list(key) for key in numbers]

    def __len__(self) -> int:
        return len(self.title_spans)

    @classmethod
    def build(cls, count: int, rows: Iterable[tuple[int, str | None, Sequence[str] | None]]) -> ItemMeta:
        """rows: (snapshot position, title, tags) in any order; positions never given get no title or tags."""
        titles: list[bytes | None] = [None] * count
        tags: list[list[int]] = [[] for _ in range(count)]
        vocabulary: dict[str, int] = {}
        for pos, title, item_tags in rows:
            titles[pos] = title.encode() if title is not None else None
            tags[pos] = [vocabulary.setdefault(tag, len(vocabulary)) for tag in dict.fromkeys(item_tags or [])]
        ends = np.cumsum([len(t) if t is not None else 0 for t in titles], dtype=np.int64)
        spans = np.stack([ends - [len(t) if t is not None else 0 for t in titles], ends], axis=1).reshape(count, 2)
        spans[[t is None for t in titles], 0] = -1
        blob = np.frombuffer(b"".join(t for t in titles if t), np.uint8)
        tag_offsets = np.zeros(count + 1, np.int64)
        np.cumsum([len(t) for t in tags], out=tag_offsets[1:])
        codes = np.fromiter((c for t in tags for c in t), np.int32, count=int(tag_offsets[-1]))
        return cls(blob, spans, tag_offsets, codes, list(vocabulary))

    def title(self, pos: int) -> str | None:
        return self.titles([pos])[0]

    def titles(self, rows: Sequence[int]) -> list[str | None]:
        """The rows' titles, with one gather of their spans."""
        view = memoryview(self.blob)  # type: ignore[arg-type]  # numpy's stubs omit the buffer protocol
        spans = self.title_spans[np.asarray(rows, np.int64)].tolist()
        return [str(view[start:end], "utf-8") if start >= 0 else None for start, end in spans]

    def _codes(self, pos: int) -> list[int]:
        return self.tag_codes[int(self.tag_offsets[pos]) : int(self.tag_offsets[pos + 1])].tolist()

    def tags(self, pos: int) -> list[str]:
        return [self.vocabulary[c] for c in self._codes(pos)]

    def rows_with_tags(self, wanted: Sequence[str]) -> np.ndarray:
        """(n,) bool: the rows carrying at least one of the tags; a level-1 tag (`Comedy`) also matches its
        level-2 ones (`Comedy/stand-up`)."""
        codes = [c for c, tag in enumerate(self.vocabulary) if any(tag == w or tag.startswith(w + "/") for w in wanted)]
        mask = np.zeros(len(self), bool)
        if codes:
            hit = np.flatnonzero(np.isin(self.tag_codes, codes))  # positions in tag_codes
            mask[np.searchsorted(self.tag_offsets, hit, side="right") - 1] = True  # each position's row
        return mask

    def top_level_sets(self, rows: np.ndarray) -> list[frozenset[int]]:
        """Each row's first-level tags as a set of ints (`top_level_names` has their names); rows with the
        same set share one frozenset object."""
        sets = self.top_sets
        return [sets[number] for number in self.top_set_ids[np.asarray(rows, np.int64)].tolist()]

    def save(self, directory: Path) -> None:
        (directory / FILES[0]).write_bytes(self.blob.tobytes())
        np.save(directory / FILES[1], self.title_spans)
        np.save(directory / FILES[2], self.tag_offsets)
        np.save(directory / FILES[3], self.tag_codes)
        (directory / FILES[4]).write_text(json.dumps(self.vocabulary))
        np.save(directory / TOP_SET_FILES[0], self.top_set_ids)
        (directory / TOP_SET_FILES[1]).write_text(json.dumps([sorted(tops) for tops in self.top_sets]))

    @classmethod
    def load(cls, directory: Path) -> ItemMeta | None:
        """None for a snapshot written before these files existed (callers fall back to the database)."""
        if not all((directory / name).is_file() for name in FILES):
            return None
        blob_path = directory / FILES[0]
        empty = blob_path.stat().st_size == 0  # numpy cannot map an empty file
        blob = np.zeros(0, np.uint8) if empty else np.asarray(np.memmap(blob_path, np.uint8, mode="r"))
        # plain ndarray views of the maps: indexing a np.memmap subclass costs several times more per call
        spans, tag_offsets, codes = (np.asarray(np.load(directory / name, mmap_mode="r")) for name in FILES[1:4])
        top_sets = None
        if all((directory / name).is_file() for name in TOP_SET_FILES):
            top_sets = (
                np.asarray(np.load(directory / TOP_SET_FILES[0], mmap_mode="r")),
                json.loads((directory / TOP_SET_FILES[1]).read_text()),
            )
        return cls(blob, spans, tag_offsets, codes, json.loads((directory / FILES[4]).read_text()), top_sets)
