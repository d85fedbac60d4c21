"""The FastAPI application: `create_app(settings)`; served by `mmrecall serve`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

import mmrecall
from mmrecall.api.auth import parse_keys
from mmrecall.api.fast import FastPaths
from mmrecall.api.limits import BodyLimit
from mmrecall.api.routes import inspect, interactions, items, jobs, similar, ui
from mmrecall.core.settings import Settings, get_settings
from mmrecall.recall.serving import ServingIndex
from mmrecall.storage.db import get_engine

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One query is too small to split across cores; with concurrent requests, OpenMP threads only
        # fight each other (measured: a single flat search at 10k went from 16 ms to 0.45 ms under load).
        faiss.omp_set_num_threads(max(1, settings.api_faiss_threads))
        threadpool_limits(max(1, settings.api_faiss_threads))  # BLAS (numpy's exact search) likewise
        settings.ensure_dirs()
        get_engine(settings.resolved_database_url)  # creates the tables on first start
        app.state.serving.start()
        yield
        app.state.serving.stop()

    app = FastAPI(title="mmrecall", version=mmrecall.__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.api_keys = parse_keys(settings.api_keys)
    if not app.state.api_keys:
        log.warning("no MMRECALL_API_KEYS configured: serving loopback clients only")
    if settings.api_fast_paths:  # inside the body limit (middleware added later wraps the earlier)
        app.add_middleware(FastPaths)
    app.add_middleware(BodyLimit, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    app.state.serving = ServingIndex(settings)
    for module in (items, interactions, jobs, similar, inspect, ui):
        app.include_router(module.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        serving = app.state.serving
        return {
            "status": "ok",
            "snapshot": serving.snapshot_name,
            "encoder_version": serving.version,
            "indexed": len(serving.live),
            "process": os.getpid(),  # which API process answered (several may serve one port)
        }

    return app
