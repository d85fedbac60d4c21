"""Queries for the CLI: against a running API over HTTP, or straight from the local snapshot."""

from __future__ import annotations

import httpx

from mmrecall.core.settings import Settings


class QueryError(RuntimeError):
    pass


def _answer(response: httpx.Response) -> dict:
    if response.status_code != 200:
        detail = response.json().get("detail")
        if isinstance(detail, list):  # a validation error: each field and why
            detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])[1:]))}: {e.get('msg')}" for e in detail)
        raise QueryError(f"HTTP {response.status_code}: {detail}")
    return response.json()


def similar_items(
    settings: Settings,
    item_id: str,
    *,
    k: int = 10,
    channel: str = "v2v",
    filters: dict | None = None,
    api: str | None = None,
) -> dict:
    """GET /v1/similar/{id}'s answer; filters: its query-time filter fields (the API's names)."""
    params = {"k": k, "channel": channel, **(filters or {})}
    if api:
        return _answer(httpx.get(f"{api.rstrip('/')}/v1/similar/{item_id}", params=params, timeout=30))
    from pydantic import ValidationError

    from mmrecall.api.schemas import FilterIn
    from mmrecall.recall.filters import FilterError
    from mmrecall.recall.serving import NotReady, ServingIndex, UnknownItem, similar_to

    try:
        recall_filter = FilterIn(**(filters or {})).recall_filter()  # the route's validation
    except ValidationError as exc:
        raise QueryError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    serving = ServingIndex(settings)
    serving.refresh()
    try:
        return similar_to(serving, item_id, k, channel, recall_filter=recall_filter)
    except (UnknownItem, NotReady, FilterError) as exc:
        raise QueryError(str(exc)) from exc


def recall_items(settings: Settings, body: dict, *, api: str | None = None) -> dict:
    """The merged recall set, as POST /v1/recall answers it (through the API's own route in process)."""
    if api:
        return _answer(httpx.post(f"{api.rstrip('/')}/v1/recall", json=body, timeout=60))
    from fastapi.testclient import TestClient

    from mmrecall.api.app import create_app

    with TestClient(create_app(settings)) as client:  # the same app, without a server
        return _answer(client.post("/v1/recall", json=body))
