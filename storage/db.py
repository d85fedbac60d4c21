"""Tables of the catalogue and the engine/session factory (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mmrecall.storage import migrations
from mmrecall.storage.title_search import create_title_index

ITEM_STATUSES = ("pending", "encoding", "ready", "failed", "deleted")
JOB_STATES = ("queued", "running", "succeeded", "failed")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list] = mapped_column(JSON, default=list)
    cover: Mapped[str | None] = mapped_column(Text, nullable=True)  # absolute path of the cover image
    frames: Mapped[list | None] = mapped_column(JSON, nullable=True)  # absolute paths of frame images
    video: Mapped[str | None] = mapped_column(Text, nullable=True)  # absolute path of a video file
    created_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # unix seconds
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cluster_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)  # set by reindex
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time, index=True)
    # encode attempts since the last upsert: a batch that keeps killing its worker is given up, not retried forever
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True, default=0)
    # frames of a video (or frame list) the active encoder read, and the thumbnails kept of its frames
    frames_used: Mapped[int | None] = mapped_column(Integer, nullable=True)
    frame_thumbnails: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ItemVector(Base):
    """One vector per (item, encoder version). The autoincrement id doubles as a change feed:
    a re-encode deletes and re-inserts, so readers poll `id > last_seen` to pick up new vectors."""

    __tablename__ = "item_vectors"
    __table_args__ = (
        UniqueConstraint("item_id", "version", name="uq_item_version"),
        {"sqlite_autoincrement": True},  # never reuse a deleted row's id: the feed relies on it
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    encoder: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, L2-normalized
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)  # /metrics' encode rate


class Interaction(Base):
    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_user_ts", "user_id", "timestamp"),
        # the same event twice is one event: re-ingesting a file must not double it
        UniqueConstraint("user_id", "item_id", "timestamp", "event", name="uq_interaction"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # keeps file order
    user_id: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str] = mapped_column(String(128), index=True)
    timestamp: Mapped[float] = mapped_column(Float)
    event: Mapped[str] = mapped_column(String(32), default="")
    weight: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)


class EncoderState(Base):
    """Which encoder is active, and which one is being backfilled (key: "active" | "pending")."""

    __tablename__ = "encoder_state"

    key: Mapped[str] = mapped_column(String(16), primary_key=True)
    spec: Mapped[str] = mapped_column(Text)  # a registry name or a checkpoint directory
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)


def normalize_url(url: str) -> str:
    """Route plain `postgresql://` URLs to psycopg 3, the driver we install."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: the API reads while a worker writes
            cursor = dbapi_conn.cursor()
            # switching a new file to WAL answers "locked" to a second process at once, without the busy timeout
            retry_while(
                lambda: cursor.execute("PRAGMA journal_mode=WAL"), sqlite3.OperationalError, ("locked",), attempts=100
            )
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        # a database that does not answer fails a request within seconds, not after the OS's TCP timeout
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    create_schema(engine)
    return engine


def create_schema(engine: Engine) -> None:
    """The tables at the newest schema revision (storage.migrations), and the title search index.
    Processes starting together on a new database (the API's processes, workers) take turns: one makes the
    schema, the others then find it made. Without the turns, a process could see the first tables of a
    schema still being made (SQLite commits each CREATE TABLE on its own) and take it for a database from
    before migrations."""

    def create() -> None:
        migrations.upgrade(engine, before_stamp=lambda: add_missing_columns(engine))
        create_title_index(engine)

    with schema_lock(engine):
        retry_while(create, DBAPIError, ("already exists", "duplicate"), attempts=5)


SCHEMA_LOCK_KEY = 0x6D6D7263  # PostgreSQL advisory lock id for schema changes ("mmrc")


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """One process at a time changes the schema: an advisory lock on PostgreSQL, a lock file beside a SQLite
    file (an in-memory SQLite database belongs to one process: no lock)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.schema-lock", "a") as handle:  # noqa: PTH123 - a lock file, held while open
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def retry_while(
    work: Callable[[], object],
    error: type[Exception],
    messages: tuple[str, ...],
    *,
    attempts: int,
    pause_s: float = 0.05,
) -> None:
    """Run `work`, again after a pause while it fails with `error` saying one of `messages` (a race with
    another process that resolves itself); any other failure, or the last attempt's, is raised."""
    for attempt in range(attempts):
        try:
            work()
            return
        except error as exc:
            said = str(getattr(exc, "orig", exc)).lower()
            if attempt == attempts - 1 or not any(m in said for m in messages):
                raise
            time.sleep(pause_s)


def add_missing_columns(engine: Engine) -> list[str]:
    """For a database made before migrations: the nullable columns that releases then added in place."""
    inspector = inspect(engine)
    added = []
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                    added.append(f"{table.name}.{column.name}")
    return added


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
