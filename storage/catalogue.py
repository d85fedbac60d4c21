"""Catalogue operations: items and their encode status, vectors, interactions, jobs.

Plain functions over a SQLAlchemy session, called thinly by the API, the CLI and the workers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mmrecall.core.events import EventRule
from mmrecall.core.interchange import InteractionRecord, ItemRecord
from mmrecall.storage.db import EncoderState, Interaction, Item, ItemVector, Job

ITEM_FIELDS = ("title", "tags", "cover", "frames", "video", "created_at")


def upsert_items(session: Session, records: Sequence[ItemRecord]) -> list[str]:
    """Insert or update items and set them `pending`; returns the ids in order, duplicates merged
    (the last record of an id wins). One INSERT ... ON CONFLICT DO UPDATE, so concurrent ingests of
    the same id leave one item whatever their interleaving."""
    by_id = {record.id: record for record in records}
    if not by_id:
        return []
    now = time.time()
    rows = [
        {
            "id": item_id,
            **{f: getattr(r, f) for f in ITEM_FIELDS},
            "status": "pending",
            "error": None,
            "updated_at": now,
            "attempts": 0,
        }
        for item_id, r in by_id.items()
    ]
    dialect = session.get_bind().dialect.name
    insert_for = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(dialect)
    if insert_for is None:  # another database: read, then insert or update (not race-safe)
        existing = set(session.scalars(select(Item.id).where(Item.id.in_(list(by_id)))))
        for row in rows:
            if row["id"] in existing:
                session.execute(update(Item).where(Item.id == row["id"]).values(**row))
            else:
                session.add(Item(**row))
        session.flush()
        return list(by_id)
    for start in range(0, len(rows), 2000):
        statement = insert_for(Item).values(rows[start : start + 2000])
        changed = {
            name: statement.excluded[name] for name in (*ITEM_FIELDS, "status", "error", "updated_at", "attempts")
        }
        session.execute(statement.on_conflict_do_update(index_elements=[Item.id], set_=changed))
    session.expire_all()
    return list(by_id)


def start_encoding(
    session: Session, item_ids: Sequence[str], *, max_attempts: int
) -> tuple[dict[str, Item], list[str]]:
    """Mark items still waiting (`pending`, or `encoding` by a task that was lost) as `encoding` and
    count the attempt: (items to encode, ids given up on). Items already `ready`, `failed` or `deleted`
    are left alone, so a redelivered task writes nothing twice.

    An item whose earlier attempts all died with their worker (a crash inside a decoder, say) ends
    `failed` after max_attempts, instead of being redelivered forever."""
    waiting = ("pending", "encoding")
    items = {i: item for i, item in get_items(session, item_ids).items() if item.status in waiting}
    given_up = [i for i, item in items.items() if (item.attempts or 0) >= max_attempts]
    if given_up:
        set_status(
            session,
            given_up,
            "failed",
            f"gave up after {max_attempts} attempts: the worker died while encoding this item",
        )
    todo = {i: item for i, item in items.items() if i not in set(given_up)}
    if todo:
        session.execute(
            update(Item)
            .where(Item.id.in_(list(todo)))
            .values(status="encoding", error=None, attempts=func.coalesce(Item.attempts, 0) + 1, updated_at=time.time())
        )
    return todo, given_up


def stale_items(session: Session, older_than: float, *, limit: int = 50_000) -> list[str]:
    """Items `pending` or `encoding` with no change since `older_than` (their task may be lost)."""
    return list(
        session.scalars(
            select(Item.id).where(Item.status.in_(("pending", "encoding")), Item.updated_at < older_than).limit(limit)
        )
    )


def touch_items(session: Session, item_ids: Sequence[str]) -> None:
    """Restart the items' staleness clock (after re-enqueueing them) without changing their status."""
    for start in range(0, len(item_ids), 5000):
        chunk = list(item_ids[start : start + 5000])
        session.execute(update(Item).where(Item.id.in_(chunk)).values(updated_at=time.time()))


def recent_jobs(session: Session, *, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def list_items(session: Session, *, status: str | None = None, limit: int = 100) -> list[Item]:
    """Items, most recently changed first, optionally of one status (e.g. the failed ones with reasons)."""
    query = select(Item).order_by(Item.updated_at.desc()).limit(limit)
    return list(session.scalars(query.where(Item.status == status) if status else query))


def user_history(session: Session, user_id: str, *, limit: int = 200) -> list[tuple[str, float, str | None]]:
    """The user's latest interactions as (item id, timestamp, event), oldest first."""
    rows = session.execute(
        select(Interaction.item_id, Interaction.timestamp, Interaction.event)
        .where(Interaction.user_id == user_id)
        .order_by(Interaction.timestamp.desc(), Interaction.id.desc())
        .limit(limit)
    ).all()
    return [tuple(row) for row in reversed(rows)]


def set_frame_counts(session: Session, counts: dict[str, tuple[int | None, int | None]]) -> None:
    """item id -> (frames the encoder read, frame thumbnails kept)."""
    for item_id, (used, thumbnails) in counts.items():
        session.execute(update(Item).where(Item.id == item_id).values(frames_used=used, frame_thumbnails=thumbnails))


def interaction_counts(session: Session) -> dict[str, int]:
    """Interactions per item (the popularity the cluster channel's prior is made of)."""
    rows = session.execute(select(Interaction.item_id, func.count()).group_by(Interaction.item_id))
    return {item: int(count) for item, count in rows}


def user_items(session: Session, user_id: str) -> list[str]:
    """Every item the user ever interacted with, once each."""
    return list(session.scalars(select(Interaction.item_id).where(Interaction.user_id == user_id).distinct()))


def user_positive_history(
    session: Session, user_id: str, rules: Mapping[str, EventRule], *, limit: int = 200
) -> list[tuple[str, float]]:
    """The user's latest positive interactions as (item id, timestamp), oldest first (core.events: reads
    and negatives are not history)."""
    rows = session.execute(
        _positive_query(rules)
        .where(Interaction.user_id == user_id)
        .order_by(Interaction.timestamp.desc(), Interaction.id.desc())
        .limit(limit)
    ).all()
    return [(item, ts) for item, ts in _positives(rows, rules)][::-1]


def positive_interactions(session: Session, rules: Mapping[str, EventRule]) -> tuple[list[str], np.ndarray]:
    """(item id, unix seconds) of every positive interaction (core.events), as a list and an array: what the
    fallback rankings count."""
    items, times = [], []
    for item, stamp in _positives(session.execute(_positive_query(rules).execution_options(yield_per=50_000)), rules):
        items.append(item)
        times.append(stamp)
    return items, np.asarray(times, np.float64)


def _positive_query(rules: Mapping[str, EventRule]):
    """(item, timestamp, event, weight) of interactions whose event may be positive (its rule's kind)."""
    may_be_positive = [name for name, rule in rules.items() if rule.kind == "positive"]
    return select(Interaction.item_id, Interaction.timestamp, Interaction.event, Interaction.weight).where(
        Interaction.event.in_(may_be_positive)
    )


def _positives(rows, rules: Mapping[str, EventRule]) -> Iterator[tuple[str, float]]:
    """(item, timestamp) of the rows that are positive (a rule's `negative_at_most` may make one negative)."""
    for item, stamp, event, weight in rows:
        if rules[event].classify(weight)[0] == "positive":
            yield item, stamp


def user_never_recall(
    session: Session, user_id: str, rules: Mapping[str, EventRule], *, read_exclude_s: float, now: float
) -> list[str]:
    """Items recall must not return to the user: everything they acted on (positive or negative), and what
    they were shown without acting on (read) in the last `read_exclude_s`."""
    reads = [name for name, rule in rules.items() if rule.kind == "read"]
    recent_read = and_(Interaction.event.in_(reads), Interaction.timestamp > now - read_exclude_s)
    query = select(Interaction.item_id).where(
        Interaction.user_id == user_id, or_(Interaction.event.not_in(reads), recent_read)
    )
    return list(session.scalars(query.distinct()))


def touch_job(session: Session, job_id: str) -> None:
    """A running job's heartbeat: its row's updated_at moves, nothing else."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(("queued", "running"))).values(updated_at=time.time())
    )


def stale_jobs(session: Session, older_than: float) -> list[Job]:
    """Jobs queued or running with no progress since `older_than`."""
    return list(session.scalars(select(Job).where(Job.state.in_(("queued", "running")), Job.updated_at < older_than)))


def fail_jobs(session: Session, job_ids: Sequence[str], reason: str) -> None:
    if job_ids:
        query = update(Job).where(Job.id.in_(list(job_ids)), Job.state.in_(("queued", "running")))
        session.execute(query.values(state="failed", error=reason, updated_at=time.time()))


def requeue_job(session: Session, job: Job) -> int:
    """A job whose worker was lost back to `queued` for another run; the number of that run."""
    attempt = int((job.params or {}).get("attempt", 1)) + 1
    job.params = {**(job.params or {}), "attempt": attempt}
    job.state, job.message, job.updated_at = "queued", f"run {attempt}: its previous worker was lost", time.time()
    return attempt


def claim_job(session: Session, job_id: str, worker: str) -> bool:
    """queued -> running for the one task that runs it, recording the worker (a job a worker ran is one
    reconcile may send again; one run in a CLI's process is not); False when it is not queued (a second
    delivery of its message, or a job that ended meanwhile)."""
    query = update(Job).where(Job.id == job_id, Job.state == "queued")
    if session.execute(query.values(state="running", updated_at=time.time())).rowcount != 1:
        return False
    job = session.get(Job, job_id)
    job.params = {**(job.params or {}), "worker": worker}
    return True


def get_item(session: Session, item_id: str) -> Item | None:
    return session.get(Item, item_id)


def get_items(session: Session, item_ids: Iterable[str]) -> dict[str, Item]:
    ids = list(item_ids)
    return {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(ids)))}


def tags_of(session: Session, item_ids: Iterable[str]) -> dict[str, list[str]]:
    ids = list(item_ids)
    return dict(session.execute(select(Item.id, Item.tags).where(Item.id.in_(ids))).all()) if ids else {}


def item_facts(session: Session, item_ids: Sequence[str]) -> dict[str, tuple[str | None, list[str], float | None]]:
    """id -> (title, tags, created_at): what serving reads of items newer than the snapshot, in one query."""
    query = select(Item.id, Item.title, Item.tags, Item.created_at).where(Item.id.in_(list(item_ids)))
    return {item: (title, tags or [], created) for item, title, tags, created in session.execute(query)}


def created_times(session: Session) -> dict[str, float]:
    """id -> created_at of every live item that has one (the snapshot's creation-time column)."""
    query = select(Item.id, Item.created_at).where(Item.status != "deleted", Item.created_at.is_not(None))
    return dict(session.execute(query).all())


def titles(session: Session, item_ids: Sequence[str]) -> dict[str, str]:
    return dict(session.execute(select(Item.id, Item.title).where(Item.id.in_(list(item_ids)))).all())


def iter_item_meta(session: Session, *, chunk: int = 50_000) -> Iterator[tuple[str, str | None, list[str] | None]]:
    """(id, title, tags) of every live item, in id order, read in chunks (keyset pagination)."""
    last = ""
    while True:
        rows = session.execute(
            select(Item.id, Item.title, Item.tags)
            .where(Item.id > last, Item.status != "deleted")
            .order_by(Item.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield from rows


def set_status(session: Session, item_ids: Sequence[str], status: str, error: str | None = None) -> None:
    if item_ids:
        session.execute(
            update(Item).where(Item.id.in_(list(item_ids))).values(status=status, error=error, updated_at=time.time())
        )


def count_by_status(session: Session, item_ids: Sequence[str] | None = None) -> dict[str, int]:
    query = select(Item.status, func.count()).group_by(Item.status)
    if item_ids is not None:
        query = query.where(Item.id.in_(list(item_ids)))
    return {status: count for status, count in session.execute(query)}


def failed_items(session: Session, item_ids: Sequence[str], *, limit: int = 5) -> dict[str, str]:
    """A few failed items among `item_ids` with their reasons."""
    found: dict[str, str] = {}
    for start in range(0, len(item_ids), 5000):
        rows = session.execute(
            select(Item.id, Item.error)
            .where(Item.id.in_(list(item_ids[start : start + 5000])), Item.status == "failed")
            .limit(limit - len(found))
        )
        found.update({item_id: error or "" for item_id, error in rows})
        if len(found) >= limit:
            break
    return found


def store_vectors(
    session: Session,
    item_ids: Sequence[str],
    vectors: np.ndarray,
    *,
    encoder: str,
    version: str,
    mark_ready: bool = True,
) -> None:
    """Upsert by (item, version) and mark the items `ready` (not for a backfill's version). Rows are
    replaced rather than updated so that their new ids show up in the change feed."""
    if not item_ids:
        return
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    session.execute(delete(ItemVector).where(ItemVector.item_id.in_(list(item_ids)), ItemVector.version == version))
    session.add_all(
        ItemVector(item_id=item_id, encoder=encoder, version=version, dim=vec.shape[0], vector=vec.tobytes())
        for item_id, vec in zip(item_ids, vectors, strict=True)
    )
    if mark_ready:
        set_status(session, item_ids, "ready")


def set_cluster_ids(session: Session, item_ids: Sequence[str], clusters: np.ndarray) -> None:
    """Store each item's k-means cluster id (bulk, in chunks), in id order: two reindexes writing at once
    (a training's activation and a scheduled one) then lock rows in the same order instead of deadlocking
    (bench soak, PostgreSQL)."""
    table = Item.__table__
    statement = update(table).where(table.c.id == bindparam("item")).values(cluster_id=bindparam("cluster"))
    rows = sorted(
        ({"item": i, "cluster": int(c)} for i, c in zip(item_ids, clusters, strict=True)), key=lambda r: r["item"]
    )
    for start in range(0, len(rows), 20_000):
        session.connection().execute(statement, rows[start : start + 20_000])


def delete_item(session: Session, item_id: str) -> bool:
    """Mark an item deleted and drop its vectors (every version); False if there is no such live item."""
    item = session.get(Item, item_id)
    if item is None or item.status == "deleted":
        return False
    item.status, item.error, item.cluster_id, item.updated_at = "deleted", None, None, time.time()
    session.execute(delete(ItemVector).where(ItemVector.item_id == item_id))
    return True


def deleted_since(session: Session, since: float) -> list[tuple[str, float]]:
    return list(
        session.execute(select(Item.id, Item.updated_at).where(Item.status == "deleted", Item.updated_at > since))
    )


def ready_item_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Item.id).where(Item.status == "ready").order_by(Item.id)))


def encoder_state(session: Session) -> dict[str, str]:
    """{"active": spec, "pending": spec} as far as set."""
    return {row.key: row.spec for row in session.scalars(select(EncoderState))}


def set_encoder_state(session: Session, key: str, spec: str) -> None:
    row = session.get(EncoderState, key)
    if row is None:
        session.add(EncoderState(key=key, spec=spec))
    else:
        row.spec, row.updated_at = spec, time.time()


def clear_encoder_state(session: Session, key: str) -> None:
    session.execute(delete(EncoderState).where(EncoderState.key == key))


def _decode(rows: Sequence[tuple[str, bytes]], dim: int) -> tuple[list[str], np.ndarray]:
    ids = [row[0] for row in rows]
    matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dim)
    return ids, matrix.astype(np.float32, copy=False)


def vector_dim(session: Session, version: str) -> int | None:
    return session.scalar(select(ItemVector.dim).where(ItemVector.version == version).limit(1))


def count_vectors(session: Session, version: str) -> int:
    return session.scalar(select(func.count()).where(ItemVector.version == version)) or 0


def vectors_of(session: Session, item_ids: Sequence[str], version: str) -> dict[str, np.ndarray]:
    """item id -> its vector of this encoder version, for those of `item_ids` that have one."""
    dim = vector_dim(session, version)
    if not dim or not item_ids:
        return {}
    query = select(ItemVector.item_id, ItemVector.vector).where(
        ItemVector.version == version, ItemVector.item_id.in_(list(item_ids))
    )
    ids, matrix = _decode([(r[0], r[1]) for r in session.execute(query)], dim)
    return dict(zip(ids, matrix, strict=True))


def item_ids_with_vectors(session: Session, version: str, *, after_row: int = 0) -> set[str]:
    """The items with a vector of this encoder version written after the feed's row `after_row`."""
    query = select(ItemVector.item_id).where(ItemVector.version == version, ItemVector.id > after_row)
    return set(session.scalars(query.distinct()))


def last_vector_row(session: Session) -> int:
    """The change feed's position: the newest vector row (0: none)."""
    return session.scalar(select(func.max(ItemVector.id))) or 0


def iter_vectors(session: Session, version: str, *, chunk: int = 50_000) -> Iterator[tuple[list[str], np.ndarray, int]]:
    """All vectors of a version in id order, in chunks: (item ids, float32 (n, d), last row id)."""
    dim = vector_dim(session, version)
    last = 0
    while dim:
        rows = session.execute(
            select(ItemVector.id, ItemVector.item_id, ItemVector.vector)
            .where(ItemVector.version == version, ItemVector.id > last)
            .order_by(ItemVector.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        ids, matrix = _decode([(r[1], r[2]) for r in rows], dim)
        yield ids, matrix, last


def vector_rows_after(session: Session, version: str, after_row: int, *, limit: int = 50_000) -> list[int]:
    """Row ids of a version's vectors after `after_row`, ascending: the change feed's cheap half."""
    return list(
        session.scalars(
            select(ItemVector.id)
            .where(ItemVector.version == version, ItemVector.id > after_row)
            .order_by(ItemVector.id)
            .limit(limit)
        )
    )


def vectors_by_rows(session: Session, rows: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """(item ids, float32 (n, d)) of the given vector rows, in the order given."""
    if not rows:
        return [], np.zeros((0, 0), np.float32)
    found = {
        row_id: (item_id, blob, dim)
        for row_id, item_id, blob, dim in session.execute(
            select(ItemVector.id, ItemVector.item_id, ItemVector.vector, ItemVector.dim).where(
                ItemVector.id.in_(list(rows))
            )
        )
    }
    present = [found[row] for row in rows if row in found]
    if not present:
        return [], np.zeros((0, 0), np.float32)
    return _decode([(item_id, blob) for item_id, blob, _ in present], present[0][2])


def max_vector_row(session: Session, version: str) -> int:
    return session.scalar(select(func.max(ItemVector.id)).where(ItemVector.version == version)) or 0


def get_vectors(session: Session, version: str, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    rows = session.execute(
        select(ItemVector.item_id, ItemVector.vector).where(
            ItemVector.version == version, ItemVector.item_id.in_(list(item_ids))
        )
    ).all()
    return {item_id: np.frombuffer(blob, dtype="<f4").astype(np.float32) for item_id, blob in rows}


def add_interactions(session: Session, rows: Iterable[InteractionRecord]) -> int:
    """Append interactions, skipping exact repeats (same user, item, timestamp, event); returns rows added."""
    values = [{**row.model_dump(), "event": row.event or ""} for row in rows]
    if not values:
        return 0
    dialect = session.get_bind().dialect.name
    table = Interaction.__table__
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(table).on_conflict_do_nothing(constraint="uq_interaction")
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).on_conflict_do_nothing()
    else:
        statement = insert(table)
    added = 0
    for start in range(0, len(values), 5000):
        result = session.connection().execute(statement.returning(table.c.id), values[start : start + 5000])
        added += len(result.all())  # rowcount is not reliable for executemany on every driver
    return added


def create_job(session: Session, kind: str, params: dict | None = None, total: int = 0) -> Job:
    job = Job(id=uuid.uuid4().hex, kind=kind, state="queued", params=params or {}, total=total)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def update_job(session: Session, job_id: str, **fields: object) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=time.time(), **fields))
