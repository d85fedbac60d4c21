"""Vector stores: named collections of (item id, unit vector) searched by inner product, with an alias that
names the collection being served and moves to a new one atomically (a reindex writes the new collection,
then swaps; the old one answers until the swap).

Two backends behind one interface, chosen by URL (`open_store`):
- `FaissStore`, in process, under a directory: the embedded default (exact search below
  `exact_below` items, HNSW above, as `index.ann.choose_factory` picks);
- `MilvusStore` through pymilvus: a Milvus cluster by `milvus://host:port` (or `http(s)://`), or Milvus
  Lite, the embedded build from PyPI, by a file path ending in `.db`.

A search can be restricted to allowed ids or leave out excluded ones; both backends apply it inside the
search (faiss's ID selector, Milvus's boolean filter expression), not to a list found without it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from mmrecall.core.errors import ServiceUnavailable
from mmrecall.index.ann import VectorIndex, choose_factory

Hit = tuple[str, float]  # (item id, inner product)
INDEX_WAIT_S = 3600.0  # how long a collection's index may take to build before a search is refused
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")  # what Milvus accepts as a collection or alias name
# keepalive pings every 5 min, not pymilvus's 10 s: a gRPC server with the default ping policy (Milvus Lite's)
# answers more frequent pings with GOAWAY "too_many_pings", dropping calls in flight
MILVUS_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000}


class StoreError(ServiceUnavailable):
    """A store that cannot answer: unreachable, a missing collection, a dimension mismatch (the reason says
    which); raised at start-up or at the call (the API answers 503 with it), never turned into an empty
    answer."""


class VectorStore(Protocol):
    def create(self, collection: str, dim: int) -> None: ...
    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None: ...
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...
    # `target`: a collection or an alias; one list of hits per query, best first
    def search(
        self,
        target: str,
        queries: np.ndarray,
        k: int,
        *,
        allowed: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[list[Hit]]: ...
    def count(self, target: str) -> int: ...
    def dim(self, target: str) -> int: ...
    def swap_alias(self, alias: str, collection: str) -> None: ...  # created, or moved atomically
    def resolve(self, alias: str) -> str | None: ...  # the collection an alias names (None: no such alias)
    def drop(self, collection: str) -> None: ...
    def collections(self) -> list[str]: ...


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise StoreError(f"{name!r} is not a collection or alias name (letters, digits, _; not first a digit)")
    return name


def check_vectors(vectors: np.ndarray, ids: Sequence[str], dim: int, collection: str) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise StoreError(f"{len(ids)} ids for vectors of shape {matrix.shape}")
    if matrix.shape[1] != dim:
        raise StoreError(f"collection {collection!r} holds {dim}-dimensional vectors, not {matrix.shape[1]}")
    return matrix


def serving_store(url: str, *, home: Path) -> VectorStore | None:
    """The store the snapshots' searches go to: None for `faiss` (each snapshot's own faiss index, in
    process), else `open_store(url)` (StoreError when it does not answer)."""
    return None if url in ("", "faiss") else open_store(url, home=home)


def collection_name(alias: str, snapshot: str) -> str:
    """The collection a reindex writes for a snapshot directory: the alias, then the directory's name."""
    return check_name(f"{alias}_{re.sub(r'[^A-Za-z0-9_]', '_', snapshot)}")


def open_store(url: str, *, home: Path) -> VectorStore:
    """`faiss` (or empty): in process under home/vector-store; `faiss:///path`; `milvus://host:port`,
    `http(s)://host:port`: a Milvus server; a path ending in `.db`: Milvus Lite in that file."""
    if url in ("", "faiss"):
        return FaissStore(home / "vector-store")
    if url.startswith("faiss://"):
        return FaissStore(Path(url.removeprefix("faiss://")))
    if url.startswith(("milvus://", "http://", "https://")):
        return _milvus("http://" + url.removeprefix("milvus://") if url.startswith("milvus://") else url)
    if url.endswith(".db"):
        return _milvus(url)
    raise StoreError(f"unknown vector store {url!r}: faiss, faiss:///DIR, milvus://HOST:PORT or FILE.db")


_MILVUS_CLIENTS: dict[str, MilvusStore] = {}
_MILVUS_LOCK = threading.Lock()


def _milvus(uri: str) -> MilvusStore:
    """One client per server and process: every reindex and snapshot load shares its connection (a new
    connection each time piles keepalive pings on the server, which then refuses them)."""
    with _MILVUS_LOCK:
        if uri not in _MILVUS_CLIENTS:
            _MILVUS_CLIENTS[uri] = MilvusStore(uri)
        return _MILVUS_CLIENTS[uri]


class _FaissCollection:
    """Ids and vectors in insertion order, deleted ones masked out; the faiss index is rebuilt lazily after a
    change (collections are written whole by a reindex, then searched)."""

    def __init__(self, dim: int, ids: list[str] | None = None, vectors: np.ndarray | None = None) -> None:
        self.dim = dim
        self.ids: list[str] = ids or []
        self.vectors = vectors if vectors is not None else np.zeros((0, dim), np.float32)
        self.position = {item: at for at, item in enumerate(self.ids)}
        self.live = np.ones(len(self.ids), bool)
        self.index: VectorIndex | None = None

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        fresh = [i for i in dict.fromkeys(ids) if i not in self.position]
        rows = {item: vectors[at] for at, item in enumerate(ids)}  # the last one given for an id wins
        for item in ids:
            if item in self.position:
                self.vectors[self.position[item]] = rows[item]
                self.live[self.position[item]] = True
        if fresh:
            self.position.update({item: len(self.ids) + at for at, item in enumerate(fresh)})
            self.ids.extend(fresh)
            self.vectors = np.concatenate([self.vectors, np.stack([rows[i] for i in fresh])])
            self.live = np.concatenate([self.live, np.ones(len(fresh), bool)])
        self.index = None

    def delete(self, ids: Sequence[str]) -> None:
        for item in ids:
            if item in self.position:
                self.live[self.position[item]] = False

    def search(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None, exclude: Sequence[str]
    ) -> list[list[Hit]]:
        keep = self.live.copy()
        if allowed is not None:
            mask = np.zeros(len(self.ids), bool)
            mask[[self.position[i] for i in allowed if i in self.position]] = True
            keep &= mask
        keep[[self.position[i] for i in exclude if i in self.position]] = False
        if not keep.any() or k <= 0:
            return [[] for _ in queries]
        if self.index is None:  # the serving index's kind and search: exact, or HNSW over 8-bit codes rescored
            self.index = VectorIndex.build(self.ids, self.vectors, choose_factory(len(self.ids)))
        scores, found = self.index.search(queries, min(k, int(keep.sum())), allowed=None if keep.all() else keep)
        return [
            [(self.ids[at], float(score)) for at, score in zip(row, row_scores, strict=True) if at >= 0]
            for row, row_scores in zip(found, scores, strict=True)
        ]


class FaissStore:
    """Collections saved under a directory (vectors.npy, ids.json, deleted.json per collection) and aliases in
    aliases.json, replaced by an atomic rename; held in memory once loaded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._loaded: dict[str, _FaissCollection] = {}
        self._lock = threading.Lock()

    def _path(self, collection: str) -> Path:
        return self.directory / check_name(collection)

    def _collection(self, target: str) -> _FaissCollection:
        name = self.resolve(target) or target
        if name not in self._loaded:
            path = self._path(name)
            if not (path / "ids.json").is_file():
                raise StoreError(f"no collection or alias {target!r} in {self.directory}")
            vectors = np.load(path / "vectors.npy")
            loaded = _FaissCollection(vectors.shape[1], json.loads((path / "ids.json").read_text()), vectors)
            loaded.delete(json.loads((path / "deleted.json").read_text()))
            self._loaded[name] = loaded
        return self._loaded[name]

    def _save(self, name: str) -> None:
        found, path = self._loaded[name], self._path(name)
        path.mkdir(exist_ok=True)
        deleted = [item for item, live in zip(found.ids, found.live, strict=True) if not live]
        for file, write in (
            ("vectors.npy", lambda f: np.save(f, found.vectors)),
            ("ids.json", lambda f: f.write(json.dumps(found.ids).encode())),
            ("deleted.json", lambda f: f.write(json.dumps(deleted).encode())),
        ):
            temporary = path / f".{file}.tmp"
            with temporary.open("wb") as handle:
                write(handle)
            os.replace(temporary, path / file)

    def create(self, collection: str, dim: int) -> None:
        with self._lock:
            if (self._path(collection) / "ids.json").is_file():
                raise StoreError(f"collection {collection!r} exists")
            self._loaded[collection] = _FaissCollection(dim)
            self._save(collection)

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            found = self._collection(collection)
            found.upsert(list(ids), check_vectors(vectors, ids, found.dim, collection))
            self._save(self.resolve(collection) or collection)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        with self._lock:
            self._collection(collection).delete(ids)
            self._save(self.resolve(collection) or collection)

    def search(self, target, queries, k, *, allowed=None, exclude=()) -> list[list[Hit]]:
        found = self._collection(target)
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != found.dim:
            raise StoreError(f"{target!r} holds {found.dim}-dimensional vectors, not {queries.shape[1]}")
        return found.search(queries, k, allowed, exclude)

    def count(self, target: str) -> int:
        return int(self._collection(target).live.sum())

    def dim(self, target: str) -> int:
        return self._collection(target).dim

    def _aliases(self) -> dict[str, str]:
        path = self.directory / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def swap_alias(self, alias: str, collection: str) -> None:
        with self._lock:
            if not (self._path(collection) / "ids.json").is_file():
                raise StoreError(f"no collection {collection!r} to point {alias!r} at")
            aliases = {**self._aliases(), check_name(alias): collection}
            temporary = self.directory / ".aliases.json.tmp"
            temporary.write_text(json.dumps(aliases))
            os.replace(temporary, self.directory / "aliases.json")  # readers see the old file or the new

    def resolve(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def drop(self, collection: str) -> None:
        with self._lock:
            if collection in self._aliases().values():
                raise StoreError(f"collection {collection!r} is served under an alias: swap it first")
            self._loaded.pop(collection, None)
            path = self._path(collection)
            for file in path.glob("*"):
                file.unlink()
            if path.is_dir():
                path.rmdir()

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if (p / "ids.json").is_file())


def milvus_client(uri: str, *, timeout: float):
    """A pymilvus client on its own gRPC channel with MILVUS_GRPC_OPTIONS. pymilvus 3 otherwise shares one channel
    per address within a process, so whichever client connected first (say, a probe with the default 10 s
    pings) would set the keepalive for every later one, and the shared channel is never closed."""
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, timeout=timeout, grpc_options=MILVUS_GRPC_OPTIONS, dedicated=True)


class MilvusStore:
    """Milvus through pymilvus's MilvusClient: a string primary key `id` and a float vector `vector` per
    collection, inner-product metric; FLAT below `exact_below` rows at index time, HNSW above."""

    def __init__(self, uri: str, *, exact_below: int = 20_000) -> None:
        try:
            import pymilvus  # noqa: F401 - only to say what is missing
        except ImportError as exc:  # pragma: no cover - pymilvus is a dependency
            raise StoreError("the Milvus backend needs pymilvus (pip install 'pymilvus[milvus_lite]')") from exc
        self.uri, self.exact_below = uri, exact_below
        self._dims: dict[str, int] = {}  # per collection, read once: a search would otherwise ask each time
        self._indexed: set[str] = set()
        self._present: set[str] = set()  # collections seen to exist (dropped through this client: forgotten)
        try:
            self.client = milvus_client(uri, timeout=10)
            self.client.list_collections()
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises, the reason is what matters
            raise StoreError(f"the Milvus at {uri} does not answer: {exc}") from exc

    def _name(self, target: str) -> str:
        """The collection a target names: itself, or the one its alias names (StoreError: neither exists).
        A collection once seen is not asked about again: a served search then costs one round trip."""
        if target in self._present:
            return target
        aliased = self.resolve(target)
        if aliased is not None:
            return aliased
        if not self.client.has_collection(target):
            raise StoreError(f"no collection or alias {target!r} in the Milvus at {self.uri}")
        self._present.add(target)
        return target

    def create(self, collection: str, dim: int) -> None:
        from pymilvus import DataType

        if self.client.has_collection(check_name(collection)):
            raise StoreError(f"collection {collection!r} exists")
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        self.client.create_collection(collection, schema=schema)

    def _index(self, collection: str) -> None:
        """Index (FLAT or HNSW by size) and load, once, before the first search."""
        if collection in self._indexed:
            return
        self._indexed.add(collection)
        if self.client.list_indexes(collection):
            return
        self.client.flush(collection)  # sealed segments get the index; rows left in memory are searched by brute force
        params = self.client.prepare_index_params()
        if self.count(collection) < self.exact_below:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            params.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 80})
        self.client.create_index(collection, params)
        self.client.load_collection(collection)
        deadline = time.monotonic() + INDEX_WAIT_S
        while time.monotonic() < deadline:  # built in the background: serve once every row is indexed
            state = self.client.describe_index(collection, "vector")
            if state.get("state") == "Finished" and not state.get("pending_index_rows"):
                return
            time.sleep(0.5)
        raise StoreError(f"collection {collection!r} was not indexed within {INDEX_WAIT_S:.0f} s")

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        self._name(collection)
        matrix = check_vectors(vectors, ids, self.dim(collection), collection)
        rows = [{"id": item, "vector": vector.tolist()} for item, vector in zip(ids, matrix, strict=True)]
        for start in range(0, len(rows), 5_000):
            self.client.upsert(collection, rows[start : start + 5_000])

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self._name(collection)
        if ids:
            self.client.delete(collection, ids=list(ids))

    def search(self, target, queries, k, *, allowed=None, exclude=()) -> list[list[Hit]]:
        try:
            return self._search(target, queries, k, allowed, exclude)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - a server gone mid-request: the reason, not the transport's type
            raise StoreError(f"the Milvus at {self.uri} did not answer a search: {exc}") from exc

    def _search(self, target, queries, k, allowed, exclude) -> list[list[Hit]]:
        name = self._name(target)
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.dim(name):
            raise StoreError(f"{target!r} holds {self.dim(name)}-dimensional vectors, not {queries.shape[1]}")
        self._index(name)
        clauses = []
        if allowed is not None:
            if not allowed:
                return [[] for _ in queries]
            clauses.append(f"id in {json.dumps(list(allowed))}")
        if exclude:
            clauses.append(f"id not in {json.dumps(list(exclude))}")
        found = self.client.search(
            name,
            data=queries.tolist(),
            limit=k,
            filter=" and ".join(clauses),
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": {"ef": max(4 * k, 256)}},
        )
        return [[(hit["id"], float(hit["distance"])) for hit in hits] for hits in found]

    def count(self, target: str) -> int:
        name = self._name(target)
        return int(self.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def dim(self, target: str) -> int:
        name = self._name(target)
        if name not in self._dims:
            described = self.client.describe_collection(name)
            self._dims[name] = int(next(f for f in described["fields"] if f["name"] == "vector")["params"]["dim"])
        return self._dims[name]

    def swap_alias(self, alias: str, collection: str) -> None:
        if not self.client.has_collection(collection):
            raise StoreError(f"no collection {collection!r} to point {alias!r} at")
        self._index(collection)  # serving the moment it is named
        if self.resolve(check_name(alias)) is None:
            self.client.create_alias(collection, alias)
        else:
            self.client.alter_alias(collection, alias)

    def resolve(self, alias: str) -> str | None:
        if alias not in self.client.list_aliases().get("aliases", []):  # asked first: describing an unknown
            return None  # alias raises, and pymilvus logs that as an error
        return self.client.describe_alias(alias)["collection_name"]

    def drop(self, collection: str) -> None:
        if self.client.has_collection(collection) and self.client.list_aliases(collection).get("aliases"):
            raise StoreError(f"collection {collection!r} is served under an alias: swap it first")
        self.client.drop_collection(collection)
        self._dims.pop(collection, None)
        self._indexed.discard(collection)
        self._present.discard(collection)

    def collections(self) -> list[str]:
        return sorted(self.client.list_collections())
