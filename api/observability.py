"""Request ids and request metrics for every HTTP request (the fast paths' included), and /metrics.

`Observability` is the outermost middleware: it gives the request an id (the client's `X-Request-ID`, or a
new one), which every log record made while answering carries (core.logs) and the response echoes, and it
counts the request by route template, method and status (core.metrics). `/metrics` adds what is read at
scrape time: the index, the snapshot's age, the queue, and what the workers produced, from the database.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrecall.core import metrics
from mmrecall.core.logs import REQUEST_ID, install_request_ids
from mmrecall.core.settings import Settings
from mmrecall.recall.serving import ServingIndex
from mmrecall.storage.db import ItemVector, Job, session_scope

ENCODE_RATE_WINDOW_S = 60.0  # encode throughput: vectors written in this window, per second
SIMILAR_PREFIX = "/v1/similar/"


def route_label(scope: Scope) -> str:
    """The route's template (bounded cardinality): the framework's match, or the fast paths' two routes."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    path = scope.get("path", "")
    if path == "/v1/recall":
        return path
    if path.startswith(SIMILAR_PREFIX):
        return SIMILAR_PREFIX + "{item_id}"
    return "unmatched"


class Observability:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        install_request_ids()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        request_id = given.decode("latin-1")[:64] if given else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(request_id)
        status = 500  # what a request that never started a response counts as

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route, method = route_label(scope), scope.get("method", "")
            metrics.HTTP_SECONDS.labels(route, method).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_ID.reset(token)


class ScrapeCollector:
    """Gauges read when /metrics is scraped."""

    def __init__(self, settings: Settings, serving: ServingIndex) -> None:
        self.settings, self.serving = settings, serving

    def collect(self):
        serving = self.serving
        yield GaugeMetricFamily("mmrecall_index_items", "items the API serves", value=len(serving.live))
        created = serving.state.created_at
        age = GaugeMetricFamily("mmrecall_snapshot_age_seconds", "age of the serving snapshot (absent: none)")
        if created is not None:
            age.add_metric([], time.time() - created)
        yield age
        depth = queue_depth(self.settings)
        if depth is not None:
            yield GaugeMetricFamily("mmrecall_queue_depth", "tasks waiting on the broker's queue", value=depth)
        yield from self._from_database()

    def _from_database(self):
        items = GaugeMetricFamily("mmrecall_items", "catalogue items by encode status", labels=["status"])
        jobs = GaugeMetricFamily("mmrecall_jobs", "jobs by kind and state", labels=["kind", "state"])
        last = GaugeMetricFamily(
            "mmrecall_job_last_duration_seconds", "the latest succeeded job's duration", labels=["kind"]
        )
        rate = GaugeMetricFamily(
            "mmrecall_encode_items_per_second", f"vectors the workers wrote over the last {ENCODE_RATE_WINDOW_S:.0f} s"
        )
        from mmrecall.storage import catalogue

        try:
            with session_scope(self.serving.database_url) as session:
                for status, count in catalogue.count_by_status(session).items():
                    items.add_metric([status], count)
                for kind, state, count in session.execute(
                    select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                ):
                    jobs.add_metric([kind, state], count)
                for kind in ("train", "reindex", "backfill"):
                    row = session.execute(
                        select(Job.created_at, Job.updated_at)
                        .where(Job.kind == kind, Job.state == "succeeded")
                        .order_by(Job.updated_at.desc())
                        .limit(1)
                    ).first()
                    if row is not None:
                        last.add_metric([kind], row[1] - row[0])
                since = time.time() - ENCODE_RATE_WINDOW_S
                written = session.scalar(
                    select(func.count()).select_from(ItemVector).where(ItemVector.created_at > since)
                )
                rate.add_metric([], (written or 0) / ENCODE_RATE_WINDOW_S)
        except Exception:  # the database is down: the request metrics still answer; these are left out
            return
        yield from (items, jobs, last, rate)


def queue_depth(settings: Settings) -> int | None:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return int(client.llen(settings.queue))
    except redis.RedisError:
        return None


def metrics_body(settings: Settings, serving: ServingIndex) -> tuple[bytes, str]:
    """The Prometheus text exposition: this process's (or every API process's) counters, then the gauges."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(ScrapeCollector(settings, serving))
    counted = metrics.registry() or REGISTRY
    return generate_latest(counted) + generate_latest(scraped), CONTENT_TYPE_LATEST
