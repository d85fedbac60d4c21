"""The two hot query routes answered beneath the framework when everything they need is in memory.

At 1M items a /v1/similar is about 0.1 ms of work, and routing, dependency solving, response
validation and the middleware layers cost several times that per request (profiled under wrk).
`FastPaths` answers GET /v1/similar/{id} and POST /v1/recall itself when the request is well formed,
authorised, and its answer needs no database read. Any other request (a parameter out of range, no
key, a user id, an item newer than the snapshot, an unknown item) goes on to the FastAPI routes, which
answer it the documented way. Both call the same functions (recall.serving.similar_to,
recall.service.history_recall), so the bodies are the same; the tests compare them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrecall.api.auth import refusal
from mmrecall.api.deps import searched
from mmrecall.api.routes.similar import SIMILAR_K, SIMILAR_K_MAX, recall_options
from mmrecall.api.schemas import RecallIn
from mmrecall.index.store import StoreError
from mmrecall.recall.channels import SIMILAR_CHANNELS
from mmrecall.recall.filters import FilterError
from mmrecall.recall.service import NoKnownHistory, history_recall
from mmrecall.recall.serving import NeedsDatabase, NotReady, UnknownItem, similar_to

SIMILAR_PREFIX = "/v1/similar/"
RECALL_PATH = "/v1/recall"


class FastPaths:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET" and path.startswith(SIMILAR_PREFIX):
                answer = await answered(similar_answer, scope)
                if answer is not None:
                    await send_json(send, answer)
                    return
            elif method == "POST" and path == RECALL_PATH:
                body, disconnect = await read_body(receive)
                answer = await answered(recall_answer, scope, body) if disconnect is None else None
                if answer is not None:
                    await send_json(send, answer)
                    return
                receive = replay(body, disconnect, receive)
        await self.app(scope, receive, send)


async def answered(answer: Callable[..., bytes | None], scope: Scope, *args) -> bytes | None:
    app = scope.get("app")
    if app is None:
        return None
    return await searched(app.state.serving, partial(answer, scope, *args))


def _allowed(scope: Scope) -> bool:
    app = scope.get("app")
    if app is None:
        return False
    client = scope.get("client")
    authorization = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
    return refusal(app.state.api_keys, client[0] if client else None, authorization.decode("latin-1"), "read") is None


def similar_answer(scope: Scope) -> bytes | None:
    """The /v1/similar body, or None: the FastAPI route answers instead."""
    item_id = scope["path"][len(SIMILAR_PREFIX) :]
    if not item_id or "/" in item_id or not _allowed(scope):
        return None
    params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    given = dict(params)
    if len(given) != len(params) or not given.keys() <= {"k", "channel"}:
        return None
    k_text, channel = given.get("k", str(SIMILAR_K)), given.get("channel", SIMILAR_CHANNELS[0])
    valid_k = k_text.isascii() and k_text.isdigit() and 1 <= int(k_text) <= SIMILAR_K_MAX
    if not valid_k or channel not in SIMILAR_CHANNELS:
        return None
    try:
        return orjson.dumps(similar_to(scope["app"].state.serving, item_id, int(k_text), channel, in_memory_only=True))
    except (NeedsDatabase, UnknownItem, NotReady, StoreError):  # the route answers (a StoreError: 503, its reason)
        return None


def recall_answer(scope: Scope, body: bytes) -> bytes | None:
    """The /v1/recall body for a history, or None: the FastAPI route answers instead."""
    content_type = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    if not content_type.startswith(b"application/json") or not _allowed(scope):
        return None
    try:
        request = RecallIn.model_validate_json(body)
    except ValidationError:
        return None
    if request.user_id is not None:  # the user's history is in the database
        return None
    history = list(request.history or [])
    times = dict(zip(history, request.times, strict=True)) if request.times else {}
    try:
        serving = scope["app"].state.serving
        return orjson.dumps(history_recall(serving, history, times, in_memory_only=True, **recall_options(request)))
    except (NeedsDatabase, NoKnownHistory, FilterError, StoreError):
        return None


async def read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole request body, and the disconnect message if the client left before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def replay(body: bytes, disconnect: Message | None, receive: Receive) -> Receive:
    """A receive that gives the body already read once, then whatever the connection says next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if disconnect is not None:
        pending.append(disconnect)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
