"""The snapshot directory: its layout (every file, with its dtype and shape), the writer the reindex uses,
the reader serving and the benchmarks use, and the atomic `CURRENT` pointer that says which one serves.

This module is the one owner of a snapshot's file names: the index codecs it composes (`VectorIndex`,
`ClusterTable`, `ItemMeta`) declare their own files, and it lists them with the rest. A snapshot records
its layout version in `snapshot.json`; one of another version is refused with the command that rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrecall.index import ann
from mmrecall.index.ann import VectorIndex
from mmrecall.index.clusters import ClusterTable
from mmrecall.index.item_meta import FILES as ITEM_META_FILES
from mmrecall.index.item_meta import TOP_SET_FILES, ItemMeta
from mmrecall.index.store import VectorStore

LAYOUT_VERSION = 1  # bump when a file's name, dtype or meaning changes; readers refuse other versions
CURRENT = "CURRENT"  # in the snapshots root: the name of the serving snapshot directory
META = "snapshot.json"  # encoder_version, count, factory, max_row (the vectors' feed watermark), layout, ...
V2V_ROWS = "v2v-rows.npy"  # int (n, N): each row's N nearest rows, best first, -1 padded
V2V_SCORES = "v2v-scores.npy"  # float32 (n, N): their inner products
USER_TOWER = "user_tower.npz"  # G's user side as arrays (mmrecall.finetune.export), when G is the encoder
POPULARITY = "popularity.npy"  # float32 (n,): each row's popularity prior in [0, 1] (index.clusters.popularity_prior)
RANKINGS = "rankings.npz"  # the fallback channels' rankings (index.rankings): {kind}_rows, {kind}_scores
CREATED = "item-created.npy"  # float64 (n,): each row's created_at (unix seconds; NaN: not given), for filters
# the sequential channel's SASRec (finetune.sasrec.sasrec_arrays) and `row_ids` (n,): each row's id in it, -1 none
SEQUENTIAL = "sequential.npz"
FILES = (
    META,
    *ann.FILES.values(),
    *ClusterTable.FILES,
    V2V_ROWS,
    V2V_SCORES,
    USER_TOWER,
    POPULARITY,
    CREATED,
    RANKINGS,
    SEQUENTIAL,
    *ITEM_META_FILES,
    *TOP_SET_FILES,
)  # every file a snapshot may hold


class SnapshotLayoutError(RuntimeError):
    """A snapshot this code cannot read: written by another layout version."""


# --- writing ----------------------------------------------------------------------------------------------
def new_snapshot_dir(root: Path, label: str) -> Path:
    """A fresh directory to build into; invisible to readers until `publish`."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = root / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now * 1000) % 1000:03d}-{label}"
    path.mkdir()
    return path


class SnapshotWriter:
    """Builds one snapshot directory part by part; `publish` makes it the serving one."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        self.directory = new_snapshot_dir(root, label)

    def index(self, built: VectorIndex) -> None:
        built.save(self.directory)

    def clusters(self, table: ClusterTable) -> None:
        table.save(self.directory)

    def item_meta(self, meta: ItemMeta) -> None:
        meta.save(self.directory)

    def v2v_table(self, rows: np.ndarray, scores: np.ndarray) -> None:
        np.save(self.directory / V2V_ROWS, rows)
        np.save(self.directory / V2V_SCORES, scores)

    def user_tower(self, arrays: dict[str, np.ndarray]) -> None:
        np.savez(self.directory / USER_TOWER, **arrays)

    def popularity(self, prior: np.ndarray) -> None:
        np.save(self.directory / POPULARITY, np.asarray(prior, np.float32))

    def rankings(self, rankings: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        arrays = {
            f"{kind}_{part}": array
            for kind, pair in rankings.items()
            for part, array in zip(("rows", "scores"), pair, strict=True)
        }
        np.savez(self.directory / RANKINGS, **arrays)

    def created(self, times: np.ndarray) -> None:
        np.save(self.directory / CREATED, np.asarray(times, np.float64))

    def sequential(self, arrays: dict[str, np.ndarray]) -> None:
        np.savez(self.directory / SEQUENTIAL, **arrays)

    def publish(self, meta: dict) -> None:
        publish(self.root, self.directory, {**meta, "layout": LAYOUT_VERSION})


def write_meta(snapshot_dir: Path, meta: dict) -> None:
    """The metadata alone: the snapshot loads (`load_snapshot`) but does not serve until `publish`."""
    (snapshot_dir / META).write_text(json.dumps({**meta, "layout": LAYOUT_VERSION}, indent=2))


def publish(root: Path, snapshot_dir: Path, meta: dict) -> None:
    """Write the snapshot's metadata, then swap CURRENT with one atomic rename."""
    (snapshot_dir / META).write_text(json.dumps(meta, indent=2))
    tmp = root / f".{CURRENT}.{os.getpid()}"
    tmp.write_text(snapshot_dir.name)
    os.replace(tmp, root / CURRENT)


# --- reading ----------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """A published snapshot's parts; arrays are read-only views of memory maps (shared between processes)."""

    directory: Path
    meta: dict
    index: VectorIndex
    clusters: ClusterTable | None
    v2v_rows: np.ndarray | None
    v2v_scores: np.ndarray | None
    user_tower: dict[str, np.ndarray] | None  # arrays for mmrecall.recall.towers.tower_from_arrays
    item_meta: ItemMeta | None  # titles and tags by row (None: answered from the database)
    popularity: np.ndarray | None = None  # the popularity prior by row (None: a snapshot without one)
    sequential: dict[str, np.ndarray] | None = None  # arrays for mmrecall.recall.sequential (None: not trained)
    created: np.ndarray | None = None  # created_at by row (None: a snapshot without one)
    rankings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # kind -> (rows best first, scores)


def check_layout(directory: Path, meta: dict) -> None:
    """Refuse a snapshot of another layout version, naming the command that rebuilds it."""
    version = meta.get("layout", 1)  # snapshots from before the version was recorded are version 1
    if version != LAYOUT_VERSION:
        raise SnapshotLayoutError(
            f"snapshot {directory.name} has layout version {version}; this mmrecall reads version {LAYOUT_VERSION}. "
            "Run `mmrecall reindex` to rebuild it from the stored vectors."
        )


def load_snapshot(directory: Path, *, store: VectorStore | None = None) -> Snapshot:
    """store: the vector store a snapshot written to one is searched in (index.store.StoreError where it
    cannot be: none given, its collection missing, or of another dimension)."""
    meta = read_meta(directory)
    check_layout(directory, meta)
    rows = _mapped(directory / V2V_ROWS)
    return Snapshot(
        directory=directory,
        meta=meta,
        index=VectorIndex.load(directory, store=store),
        clusters=ClusterTable.load(directory),
        v2v_rows=rows,
        v2v_scores=_mapped(directory / V2V_SCORES) if rows is not None else None,
        user_tower=_arrays(directory / USER_TOWER),
        item_meta=ItemMeta.load(directory),
        popularity=_mapped(directory / POPULARITY),
        sequential=_arrays(directory / SEQUENTIAL),
        created=_mapped(directory / CREATED),
        rankings=_rankings(directory / RANKINGS),
    )


def _rankings(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    arrays = _arrays(path)
    if arrays is None:
        return None
    kinds = {key.rsplit("_", 1)[0] for key in arrays}
    return {kind: (arrays[f"{kind}_rows"], arrays[f"{kind}_scores"]) for kind in kinds}


def _arrays(path: Path) -> dict[str, np.ndarray] | None:
    """An .npz's arrays, read whole (small: model weights), or None when the snapshot has none."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _mapped(path: Path) -> np.ndarray | None:
    """A read-only ndarray view of a memory-mapped .npy (shared between API processes by the page cache)."""
    return np.asarray(np.load(path, mmap_mode="r")) if path.is_file() else None


def current_snapshot(root: Path) -> Path | None:
    pointer = root / CURRENT
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / META).is_file() else None


def read_meta(snapshot_dir: Path) -> dict:
    return json.loads((snapshot_dir / META).read_text())


def prune(root: Path, keep: int = 3, *, store: VectorStore | None = None) -> list[Path]:
    """Delete all but the newest `keep` published snapshots; never the current one. store: the vector store
    their collections are in (each removed snapshot's collection is dropped with it)."""
    current = current_snapshot(root)
    published = sorted(p for p in root.iterdir() if p.is_dir() and (p / META).is_file())
    removed = [p for p in published[:-keep] if p != current] if keep else []
    for path in removed:
        collection = read_meta(path).get("collection")
        if store is not None and collection and collection in store.collections():
            store.drop(collection)  # first: a failure leaves the snapshot that names it, not an orphan
        shutil.rmtree(path, ignore_errors=True)
    return removed
