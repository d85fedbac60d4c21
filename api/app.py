"""The FastAPI application: `create_app(settings)`; served by `mmrecall serve`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from threadpoolctl import threadpool_limits

import mmrecall
from mmrecall.api.auth import parse_keys
from mmrecall.api.fast import FastPaths
from mmrecall.api.limits import BodyLimit
from mmrecall.api.observability import Observability, metrics_body
from mmrecall.api.routes import inspect, interactions, items, jobs, similar, ui
from mmrecall.core.errors import ServiceUnavailable
from mmrecall.core.settings import Settings, get_settings
from mmrecall.pipeline.queue import BrokerUnavailable, check_broker
from mmrecall.recall.serving import ServingIndex
from mmrecall.storage.db import get_engine

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # what a 503 for a missing dependency tells clients to wait before trying again


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
        for part, problem in dependency_problems(settings).items():  # reads still serve; say what will fail
            log.warning("%s: %s (writes that need it answer 503 until it does)", part, problem)
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
    app.add_middleware(Observability)  # outermost: request ids and metrics for every request, fast paths too
    app.state.serving = ServingIndex(settings)
    for module in (items, interactions, jobs, similar, inspect, ui):
        app.include_router(module.router)

    @app.exception_handler(ServiceUnavailable)
    async def _dependency_down(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        detail = f"the database does not answer ({type(exc.orig).__name__})"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "a dependency does not answer"}})
    def readyz() -> JSONResponse:
        """200 when a snapshot is loaded and the database and the broker answer; 503 naming each that is
        missing. Reads are served from the loaded snapshot either way (`/healthz` says which)."""
        problems = dependency_problems(settings)
        if app.state.serving.snapshot_name is None:
            problems["snapshot"] = "no snapshot loaded yet: run `mmrecall reindex` (writes are accepted meanwhile)"
        if app.state.serving.refused:
            name, reason, _ = app.state.serving.refused
            problems["vector_store"] = f"snapshot {name} is not served ({reason}); the loaded one serves on"
        body = {
            "status": "not ready" if problems else "ready",
            "problems": problems,
            "snapshot": app.state.serving.snapshot_name,
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text: requests by route and status, latency by route and channel, candidates per
        channel, index size, snapshot age, queue depth, items by status, encode throughput, job durations."""
        body, content_type = metrics_body(settings, app.state.serving)
        return Response(body, media_type=content_type)

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


def dependency_problems(settings: Settings) -> dict[str, str]:
    """{"database" | "broker": what is wrong}, empty when both answer (each asked with a short timeout)."""
    problems = {}
    try:
        with get_engine(settings.resolved_database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to answer is "not ready", whatever the driver raises
        problems["database"] = f"does not answer ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    try:
        check_broker(settings)
    except BrokerUnavailable as exc:
        problems["broker"] = str(exc)
    return problems
