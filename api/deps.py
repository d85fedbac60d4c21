"""Typed dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

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
