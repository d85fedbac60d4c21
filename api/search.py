"""Search as a search box does it: an item id, else titles ranked by the database's full-text relevance
fused with the embedding rank of the query (reciprocal-rank fusion), an exact or prefix title match first.

The API process loads the encoder (torch) only on the first text search, and uses it only when it is the
encoder whose vectors are being served: a query vector from another space would be noise. Without it the
full-text ranking alone answers.
"""

from __future__ import annotations

import logging
import re
import threading

from mmrecall.core.settings import Settings
from mmrecall.recall.serving import ServiceSources, ServingIndex
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.storage.title_search import query_terms, title_matches

log = logging.getLogger(__name__)
_lock = threading.Lock()
_encoders: dict[str, object] = {}


def query_encoder(settings: Settings, serving_version: str | None):
    """The active encoder if its version is the one served, else None (then search falls back to titles)."""
    with session_scope(settings.resolved_database_url) as session:
        spec = catalogue.encoder_state(session).get("active", settings.encoder)
    with _lock:
        if spec not in _encoders:
            try:
                from mmrecall.encoders import get_encoder

                checkpoint = str(settings.image_checkpoint) if settings.image_checkpoint else None
                text_dir = str(settings.text_model_dir) if settings.text_model_dir else None
                _encoders[spec] = get_encoder(spec, checkpoint, text_dir)
            except Exception:  # a missing checkpoint must not break search: titles still work
                log.warning("search: cannot load encoder %s; falling back to title matches", spec, exc_info=True)
                _encoders[spec] = None
        encoder = _encoders[spec]
    return encoder if encoder is not None and encoder.version == serving_version else None


def search_items(settings: Settings, serving: ServingIndex, text: str, k: int) -> dict:
    state = serving.state
    url = settings.resolved_database_url
    text = text.strip()
    sources = ServiceSources(state, url)
    if state.live.vector(text) is not None:
        return {"query": text, "mode": "id", "results": [{"id": text, "score": 1.0, **_title(sources, text)}]}
    depth = max(CANDIDATES, k)
    with session_scope(url) as session:
        lexical = title_matches(session, text, limit=depth)
    encoder = query_encoder(settings, state.version) if len(state.live) else None
    semantic: list[tuple[str, str]] = []
    if encoder is not None:
        from mmrecall.encoders import ContentInput

        vector = encoder.encode([ContentInput(title=text, tags=[])])[0]
        semantic = [(r["id"], r["title"] or "") for r in sources.listing(*sources.search(vector, depth))]
    answer = {"query": text, "mode": "hybrid" if encoder is not None else "title"}
    if encoder is not None:
        answer["encoder"] = encoder.version
    return {**answer, "results": fuse_title_search(text, lexical, semantic, k)}


CANDIDATES = 50  # from each ranking before the fusion
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al., 2009)
MATCHES = ("exact", "title", "prefix", "related")  # best first: how the title matches the query


def fuse_title_search(
    query: str, lexical: list[tuple[str, str]], semantic: list[tuple[str, str]], k: int
) -> list[dict]:
    """[{"id", "score", "title", "match"}], best first: items whose title is the query ("exact"; "title":
    the same without a trailing "(year)"), then titles that start with it ("prefix"), then the rest
    ("related"); within each, by the reciprocal-rank fusion of the full-text and the embedding rankings
    (ties: the shorter title)."""
    wanted = _words(query)
    fused: dict[str, float] = {}
    titles: dict[str, str] = {}
    for ranking in (lexical, semantic):
        for rank, (item, title) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (RRF_K + rank)
            titles.setdefault(item, title)

    def match(title: str) -> int:
        words = _words(title)
        if words == wanted:
            return 0
        if _words(YEAR.sub("", title)) == wanted:
            return 1
        return 2 if words.startswith(wanted) else 3

    order = sorted(fused, key=lambda i: (match(titles[i]), -fused[i], len(titles[i]), i))[:k]
    return [
        {"id": i, "score": round(fused[i], 6), "title": titles[i], "match": MATCHES[match(titles[i])]} for i in order
    ]


YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def _words(text: str) -> str:
    return " ".join(query_terms(text))


def _title(sources: ServiceSources, item: str) -> dict:
    row = sources.row(item)
    return {"title": sources.titles([row]).get(row)}
