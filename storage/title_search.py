"""Full-text search over item titles in the database itself: SQLite's FTS5 or PostgreSQL's text search.

The index follows the items table on its own (FTS5 triggers; a PostgreSQL expression index), so every
writer keeps it current without knowing about it. `title_matches` ranks by the engine's relevance (bm25,
ts_rank); mmrecall.api.search fuses that with the embedding rank.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

FTS_TABLE = "items_title_fts"
_SQLITE_SCHEMA = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(title, content='items', content_rowid='rowid', "
    "tokenize='unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER IF NOT EXISTS items_title_fts_insert AFTER INSERT ON items BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, title) VALUES (new.rowid, new.title); END",
    f"CREATE TRIGGER IF NOT EXISTS items_title_fts_delete AFTER DELETE ON items BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title) VALUES ('delete', old.rowid, old.title); END",
    f"CREATE TRIGGER IF NOT EXISTS items_title_fts_update AFTER UPDATE OF title ON items BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title) VALUES ('delete', old.rowid, old.title); "
    f"INSERT INTO {FTS_TABLE}(rowid, title) VALUES (new.rowid, new.title); END",
)
_PG_DOCUMENT = "to_tsvector('simple', coalesce(title, ''))"
_PG_SCHEMA = (f"CREATE INDEX IF NOT EXISTS ix_items_title_fts ON items USING GIN ({_PG_DOCUMENT})",)


def create_title_index(engine: Engine) -> None:
    """The full-text index over titles; one made for a database that already holds items is filled."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            existed = conn.execute(
                text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": FTS_TABLE}
            ).first()
            for statement in _SQLITE_SCHEMA:
                conn.execute(text(statement))
            if existed is None:
                conn.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
        elif engine.dialect.name == "postgresql":
            for statement in _PG_SCHEMA:
                conn.execute(text(statement))


def query_terms(query: str) -> list[str]:
    """The query's words (letters and digits), lower-cased: nothing of the engines' query syntax gets through."""
    return re.findall(r"\w+", query.lower())


def title_matches(session: Session, query: str, *, limit: int = 50) -> list[tuple[str, str]]:
    """(id, title) of live items whose title holds every word of the query (the last may be a prefix, as
    one types), best first by the engine's relevance; when none does, those holding any of the words."""
    terms = query_terms(query)
    if not terms:
        return []
    found = _matches(session, terms, every=True, limit=limit)
    return found if found or len(terms) == 1 else _matches(session, terms, every=False, limit=limit)


def _matches(session: Session, terms: list[str], *, every: bool, limit: int) -> list[tuple[str, str]]:
    if session.get_bind().dialect.name == "postgresql":
        joined = (" & " if every else " | ").join([*terms[:-1], terms[-1] + ":*"])
        statement = text(
            f"SELECT id, title FROM items, to_tsquery('simple', :query) AS query WHERE {_PG_DOCUMENT} @@ query "
            f"AND status <> 'deleted' ORDER BY ts_rank({_PG_DOCUMENT}, query) DESC, length(title), id LIMIT :limit"
        )
    else:
        joined = (" AND " if every else " OR ").join([*(f'"{t}"' for t in terms[:-1]), f'"{terms[-1]}"*'])
        statement = text(
            f"SELECT items.id, items.title FROM {FTS_TABLE} JOIN items ON items.rowid = {FTS_TABLE}.rowid "
            f"WHERE {FTS_TABLE} MATCH :query AND items.status != 'deleted' "
            f"ORDER BY bm25({FTS_TABLE}), length(items.title), items.id LIMIT :limit"
        )
    return [(row[0], row[1]) for row in session.execute(statement, {"query": joined, "limit": limit})]
