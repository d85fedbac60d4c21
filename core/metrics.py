"""Prometheus metrics (prometheus-client): the one registry of what the service counts.

Request metrics are counted where requests are answered (api.observability); channel metrics where the
recall service runs each channel (recall.service); what the workers produce (encodes, failures, job
durations), the index and the queue are read when /metrics is scraped (`ScrapeCollector`), from the
database, the serving state and the broker, so they are right whichever process or host did the work.

Several API processes (`mmrecall serve --workers N`) share one directory of metric files
(PROMETHEUS_MULTIPROC_DIR, set by `mmrecall serve`), so any process's /metrics reports all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 200, 500, 1000)

HTTP_REQUESTS = Counter("mmrecall_http_requests", "HTTP requests answered", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "mmrecall_http_request_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS
)
CHANNEL_SECONDS = Histogram(
    "mmrecall_recall_channel_seconds",
    "time one recall channel took for one request",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
CHANNEL_CANDIDATES = Histogram(
    "mmrecall_recall_channel_candidates",
    "candidates one recall channel gave one request",
    ["channel"],
    buckets=COUNT_BUCKETS,
)


def registry() -> CollectorRegistry | None:
    """The registry /metrics reads: the multiprocess one when several processes share metric files, else
    None (the default registry)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    return combined
