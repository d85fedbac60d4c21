"""Search for the inspector: an item id, else title text through the active encoder, else a title match.

The API process loads the encoder (torch) only on the first text search, and uses it only when it
is the encoder whose vectors are being served: a query vector from another space would be noise.
"""

from __future__ import annotations

import logging
import threading

from mmrecall.core.settings import Settings
from mmrecall.recall.serving import ServiceSources, ServingIndex
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

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
    encoder = query_encoder(settings, state.version) if len(state.live) else None
    if encoder is not None:
        from mmrecall.encoders import ContentInput

        vector = encoder.encode([ContentInput(title=text, tags=[])])[0]
        return {
            "query": text,
            "mode": "encoder",
            "encoder": encoder.version,
            "results": sources.listing(*sources.search(vector, k)),
        }
    with session_scope(url) as session:
        rows = catalogue.search_titles(session, text, limit=k)
    return {"query": text, "mode": "title", "results": [{"id": i, "score": None, "title": t} for i, t in rows]}


def _title(sources: ServiceSources, item: str) -> dict:
    row = sources.row(item)
    return {"title": sources.titles([row]).get(row)}
