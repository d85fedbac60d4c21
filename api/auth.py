"""API keys with scopes: `MMRECALL_API_KEYS="KEY1:write,KEY2:read"`, sent as `Authorization: Bearer KEY`.

`write` (ingest, delete, reindex, finetune, activate) implies `read` (queries, item and job lookups).
With no keys configured the API is open but answers loopback clients only (the demo default), and
`mmrecall serve` refuses to bind a non-loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Literal

from fastapi import Depends, HTTPException, Request

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
GRANTS: dict[str, set[str]] = {"read": {"read"}, "write": {"read", "write"}}


def parse_keys(spec: str) -> dict[str, Scope]:
    """ "KEY1:write,KEY2:read" -> {key: scope}; a clear ValueError for anything else."""
    keys: dict[str, Scope] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, scope = part.rpartition(":")
        if not key or scope not in SCOPES:
            raise ValueError(f"MMRECALL_API_KEYS entry {part[:4]}... must be KEY:read or KEY:write")
        if len(key) < 16:
            raise ValueError("MMRECALL_API_KEYS: keys must be at least 16 characters")
        keys[key] = scope  # type: ignore[assignment]
    return keys


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "testclient"):  # testclient: Starlette's in-process test transport
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scope_of(presented: str, keys: dict[str, Scope]) -> Scope | None:
    """The scope of a presented key; every configured key is compared, in constant time each."""
    found: Scope | None = None
    for key, scope in keys.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = scope
    return found


def refusal(keys: dict[str, Scope], client: str | None, authorization: str, needed: Scope) -> HTTPException | None:
    """Why a request may not use a route that needs `needed` (None: it may)."""
    if not keys:
        if not is_loopback(client):
            return HTTPException(403, "no API keys are configured, so only loopback clients are served")
        return None
    kind, _, presented = authorization.partition(" ")
    if kind.lower() != "bearer" or not presented:
        return HTTPException(
            401, "missing API key: send Authorization: Bearer KEY", headers={"WWW-Authenticate": "Bearer"}
        )
    scope = scope_of(presented.strip(), keys)
    if scope is None:
        return HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    if needed not in GRANTS[scope]:
        return HTTPException(403, f"this key has the {scope!r} scope; this route needs {needed!r}")
    return None


def require(needed: Scope):
    """A route dependency: 401 without a valid key, 403 when the key's scope is not enough."""

    async def check(request: Request) -> None:  # async: pure CPU, no thread-pool hop per request
        client = request.client.host if request.client else None
        refused = refusal(request.app.state.api_keys, client, request.headers.get("authorization", ""), needed)
        if refused is not None:
            raise refused

    return Depends(check)


READ = require("read")
WRITE = require("write")
