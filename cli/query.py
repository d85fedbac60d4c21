"""Queries for the CLI: against a running API over HTTP, or straight from the local snapshot."""

from __future__ import annotations

import httpx

from mmrecall.core.settings import Settings


class QueryError(RuntimeError):
    pass


def _answer(response: httpx.Response) -> dict:
    if response.status_code != 200:
        raise QueryError(f"HTTP {response.status_code}: {response.json().get('detail')}")
    return response.json()


def similar_items(
    settings: Settings, item_id: str, *, k: int = 10, channel: str = "v2v", api: str | None = None
) -> dict:
    if api:
        return _answer(
            httpx.get(f"{api.rstrip('/')}/v1/similar/{item_id}", params={"k": k, "channel": channel}, timeout=30)
        )
    from mmrecall.recall.serving import NotReady, ServingIndex, UnknownItem, similar_to

    serving = ServingIndex(settings)
    serving.refresh()
    try:
        return similar_to(serving, item_id, k, channel)
    except (UnknownItem, NotReady) as exc:
        raise QueryError(str(exc)) from exc


def recall_items(settings: Settings, body: dict, *, api: str | None = None) -> dict:
    """The merged recall set, as POST /v1/recall answers it (through the API's own route in process)."""
    if api:
        return _answer(httpx.post(f"{api.rstrip('/')}/v1/recall", json=body, timeout=60))
    from fastapi.testclient import TestClient

    from mmrecall.api.app import create_app

    with TestClient(create_app(settings)) as client:  # the same app, without a server
        return _answer(client.post("/v1/recall", json=body))
