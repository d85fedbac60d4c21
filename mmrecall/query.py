"""Queries for the CLI: against a running API over HTTP, or straight from the local snapshot."""

from __future__ import annotations

import httpx

from mmrecall.settings import Settings


class QueryError(RuntimeError):
    pass


def similar_items(settings: Settings, item_id: str, *, k: int = 10, api: str | None = None) -> dict:
    if api:
        response = httpx.get(f"{api.rstrip('/')}/v1/similar/{item_id}", params={"k": k}, timeout=30)
        if response.status_code != 200:
            raise QueryError(f"HTTP {response.status_code}: {response.json().get('detail')}")
        return response.json()
    from api.serving import NotReady, ServingIndex, UnknownItem, similar_to
    from storage.db import session_scope

    serving = ServingIndex(settings)
    serving.refresh()
    with session_scope(settings.resolved_database_url) as session:
        try:
            return similar_to(session, serving, item_id, k)
        except (UnknownItem, NotReady) as exc:
            raise QueryError(str(exc)) from exc
