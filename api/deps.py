"""Typed dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from mmrecall.core.settings import Settings
from mmrecall.recall.serving import ServingIndex
from mmrecall.storage.db import session_scope


async def get_settings_dep(request: Request) -> Settings:  # async: no thread hop for a lookup
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session


async def get_serving(request: Request) -> ServingIndex:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope "function": the session commits before the response is sent, so a 2xx means stored (the default,
# "request", commits after the response: a client's next request could miss what it was just told is stored)
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
ServingDep = Annotated[ServingIndex, Depends(get_serving)]


T = TypeVar("T")


async def searched(serving: ServingIndex, work: Callable[[], T]) -> T:
    """The hot routes' work: on the event loop while the searches are in process (CPU work: a thread hop
    costs more than it saves, and requests interleaving in the thread pool under the GIL raise p99), in a
    worker thread when a vector store answers them over the network (a request waiting on it must not
    stop the loop: health checks and other requests go on meanwhile)."""
    snapshot = serving.live.snapshot
    if snapshot is None or snapshot.store is None:
        return work()
    return await anyio.to_thread.run_sync(work)
