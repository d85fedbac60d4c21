"""The soak's traffic, as a locust file (`locust -f` runs it in its own process; `bench soak` starts it).

Readers ask `/v1/recall` (a history, or a stored user) and `/v1/similar` at a steady rate; one writer
appends interactions, uploads new items with covers, and sends the bad inputs of BAD_INPUTS in turn. Every
request, and every id the API acknowledged (2xx), goes as one JSON line to SOAK_LOG, which `bench soak`
reads afterwards: latencies by route and minute, errors with their reasons, and what must be stored.

Only locust and the standard library here, plus Pillow for the covers: this runs under gevent.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import time

from locust import HttpUser, constant_throughput, events, task

LOG_PATH = os.environ.get("SOAK_LOG", "soak-requests.jsonl")
ITEMS = int(os.environ.get("SOAK_ITEMS", "1000"))  # catalogue ids: syn000000 ...
USERS = int(os.environ.get("SOAK_USERS", "100"))  # users with stored histories: soak-u0 ...
READ_RPS = float(os.environ.get("SOAK_READ_RPS", "20"))
WRITE_RPS = float(os.environ.get("SOAK_WRITE_RPS", "2"))
READERS = 8
PREFIX = os.environ.get("SOAK_PREFIX", "new")  # ids of the items this run uploads
EVENT = "click"

_log = open(LOG_PATH, "a", buffering=1)  # noqa: SIM115 - one line per request, for the life of the process
_counter = itertools.count()


def log(record: dict) -> None:
    _log.write(json.dumps(record) + "\n")


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, response=None, exception=None, **kw):
    status = getattr(response, "status_code", 0) or 0
    record = {"t": round(time.time() - response_time / 1000, 3), "route": name, "status": status}
    record["ms"] = round(response_time, 2)
    if status >= 500 or status == 0:  # the reason the client saw: the body's detail, or the exception
        body = getattr(response, "text", "") or ""
        record["reason"] = (body or repr(exception))[:300]
        record["retry_after"] = response.headers.get("Retry-After") if response is not None else None
    if name == "recall_user" and status == 200 and '"degraded":"' in getattr(response, "text", ""):
        record["degraded"] = True  # served from the snapshot without the user's history (the database was down)
    log(record)


def catalogue_id() -> str:
    return f"syn{random.randrange(ITEMS):06d}"


def user_id() -> str:
    return f"soak-u{random.randrange(USERS)}"


def cover_png() -> bytes:
    from PIL import Image

    pixels = bytes(random.getrandbits(8) for _ in range(48 * 48 * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", (48, 48), pixels).save(out, format="PNG")
    return out.getvalue()


class Reader(HttpUser):
    weight = READERS
    wait_time = constant_throughput(READ_RPS / READERS)

    @task(3)
    def recall_history(self) -> None:
        body = {"history": [catalogue_id() for _ in range(20)], "k": 100}
        self.client.post("/v1/recall", json=body, name="recall")

    @task(1)
    def recall_user(self) -> None:
        self.client.post("/v1/recall", json={"user_id": user_id(), "k": 100}, name="recall_user")

    @task(2)
    def similar(self) -> None:
        self.client.get(f"/v1/similar/{catalogue_id()}?k=50", name="similar")


# (label, method, path, keyword arguments for the client, the status expected): each a 4xx with a reason
BAD_INPUTS = [
    ("recall k=0", "POST", "/v1/recall", {"json": {"history": ["syn000001"], "k": 0}}, 422),
    ("recall with user_id and history", "POST", "/v1/recall", {"json": {"user_id": "u", "history": []}}, 422),
    ("recall unknown channel", "POST", "/v1/recall", {"json": {"history": ["syn000001"], "channels": ["x"]}}, 422),
    (
        "recall created_after later than created_before",
        "POST",
        "/v1/recall",
        {"json": {"history": ["syn000001"], "created_after": 2e9, "created_before": 1e9}},
        422,
    ),
    ("similar unknown item", "GET", "/v1/similar/no-such-item", {}, 404),
    ("similar k=100000", "GET", "/v1/similar/syn000001?k=100000", {}, 422),
    (
        "interaction with an unknown event",
        "POST",
        "/v1/interactions",
        {"json": {"interactions": [{"user_id": "u", "item_id": "syn000001", "timestamp": 1.0, "event": "zap"}]}},
        400,
    ),
    (
        "interaction with an unknown item",
        "POST",
        "/v1/interactions",
        {"json": {"interactions": [{"user_id": "u", "item_id": "no-such-item", "timestamp": 1.0}]}},
        400,
    ),
    (
        "interactions not JSON",
        "POST",
        "/v1/interactions",
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
        422,
    ),
    ("interactions empty list", "POST", "/v1/interactions", {"json": {"interactions": []}}, 422),
    (
        "upload a cover that is not an image",
        "POST",
        "/v1/items/upload",
        {"files": {"cover": ("x.png", b"not an image", "image/png")}, "data": {"id": "bad-cover", "title": "x"}},
        400,
    ),
    (
        "items with an id holding a newline",
        "POST",
        "/v1/items",
        {"json": {"items": [{"id": "a\nb", "title": "x"}]}},
        422,
    ),
]


class Writer(HttpUser):
    fixed_count = 1
    wait_time = constant_throughput(WRITE_RPS)

    def on_start(self) -> None:
        self._bad = itertools.cycle(BAD_INPUTS)

    @task(6)
    def interactions(self) -> None:
        now = time.time()
        rows = [
            {
                "user_id": user_id(),
                "item_id": catalogue_id(),
                "timestamp": round(now + next(_counter) * 1e-3, 3),
                "event": EVENT,
            }
            for _ in range(5)
        ]
        response = self.client.post("/v1/interactions", json={"interactions": rows}, name="interactions")
        if 200 <= response.status_code < 300:
            log({"acked_interactions": [[r["user_id"], r["item_id"], r["timestamp"]] for r in rows]})

    @task(1)
    def upload(self) -> None:
        item_id = f"{PREFIX}{next(_counter):07d}"
        files = {"cover": (f"{item_id}.png", cover_png(), "image/png")}
        data = {"id": item_id, "title": f"soak item {item_id}", "tags": "soak/new"}
        response = self.client.post("/v1/items/upload", files=files, data=data, name="upload")
        if 200 <= response.status_code < 300:
            log({"acked_item": item_id})

    @task(1)
    def bad_input(self) -> None:
        label, method, path, kwargs, expected = next(self._bad)
        with self.client.request(method, path, name="bad", catch_response=True, **kwargs) as response:
            reason = ""
            try:
                reason = str(response.json().get("detail", ""))[:200]
            except ValueError:
                pass
            log({"bad_input": label, "expected": expected, "status": response.status_code, "reason": reason})
            if response.status_code == expected and reason:
                response.success()
            else:
                response.failure(f"{label}: {response.status_code}, expected {expected} with a reason")
