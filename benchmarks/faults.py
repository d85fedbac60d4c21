"""`mmrecall bench faults`: faults and bad input against a real worker, Redis, database and API.

Each scenario injects its fault, lets the service recover on its own (acks_late redelivery, the
reconcile sweep, atomic snapshot swaps), then counts what became of every item it enqueued: `ready`,
`failed` with a reason, or lost (neither). The tests in tests/test_faults.py run the same scenarios.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import func, select

from mmrecall.benchmarks.common import table, write_result
from mmrecall.core.interchange import ItemRecord
from mmrecall.core.settings import Settings
from mmrecall.pipeline.ingest import ingest_items
from mmrecall.pipeline.queue import submit_job
from mmrecall.pipeline.reindex import reindex
from mmrecall.pipeline.runner import (
    PrivateRedis,
    free_port,
    settings_env,
    start_worker,
    wait_for_api,
    wait_for_workers,
)
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import Item, ItemVector, Job, session_scope

# recovery settings for the scenarios: a sweep every half second, stale after two
FAST_RECOVERY = {"reconcile_after_s": 2.0, "reconcile_every_s": 0.5, "job_stale_after_s": 3.0}


@dataclass
class Outcome:
    """What became of the items a scenario enqueued."""

    name: str
    faults: int = 0
    bad_inputs: int = 0
    enqueued: int = 0
    ready: int = 0
    failed: int = 0  # failed with a reason
    lost: int = 0  # neither ready nor failed-with-reason at the end, or a stored item damaged
    checks: dict = field(default_factory=dict)  # scenario-specific findings the tests assert on

    def row(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "faults", "bad_inputs", "enqueued", "ready", "failed", "lost")}


# --- helpers -------------------------------------------------------------------------------------


def isolated_settings(home: Path, redis_url: str, *, queue_prefix: str, **overrides) -> Settings:
    """A `tiny-test` instance in `home` on a queue of its own (so runs sharing a broker never meet), with a
    media root, small encode batches and a fast refresh."""
    media = home / "media"
    media.mkdir(parents=True, exist_ok=True)
    values = dict(
        home=home,
        database_url=f"sqlite:///{home / 'catalogue.db'}",
        redis_url=redis_url,
        queue=f"{queue_prefix}-{uuid.uuid4().hex[:8]}",
        encoder="tiny-test",
        media_roots=[media],
        encode_batch_size=8,
        refresh_interval_s=0.1,
    )
    values.update(overrides)
    settings = Settings(**values)
    settings.ensure_dirs()
    return settings


def scenario_settings(home: Path, redis_url: str, **overrides) -> Settings:
    return isolated_settings(home, redis_url, queue_prefix="mmrecall-faults", **{**FAST_RECOVERY, **overrides})


def make_items(settings: Settings, prefix: str, n: int, size: int = 96) -> list[ItemRecord]:
    """Items with real PNG covers (noise, so decoding costs a little) in the first media root."""
    rng = np.random.default_rng(len(prefix) + n)
    root = settings.media_roots[0]
    records = []
    for i in range(n):
        path = root / f"{prefix}{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        records.append(ItemRecord(id=f"{prefix}{i}", title=f"{prefix} item {i}", tags=[f"t{i % 4}/s"], cover=str(path)))
    return records


def statuses(settings: Settings, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(select(Item.id, Item.status, Item.error).where(Item.id.in_(ids))).all()
    return {i: (status, error) for i, status, error in rows}


def wait_terminal(settings: Settings, ids: list[str], timeout: float = 120) -> dict[str, tuple[str, str | None]]:
    deadline = time.time() + timeout
    while True:
        found = statuses(settings, ids)
        if all(found.get(i, ("?", None))[0] in ("ready", "failed") for i in ids) or time.time() > deadline:
            return found
        time.sleep(0.2)


def tally(outcome: Outcome, found: dict[str, tuple[str, str | None]], ids: list[str]) -> Outcome:
    outcome.enqueued += len(ids)
    for i in ids:
        status, error = found.get(i, ("missing", None))
        if status == "ready":
            outcome.ready += 1
        elif status == "failed" and error:
            outcome.failed += 1
        else:
            outcome.lost += 1
    return outcome


def vector_rows_per_item(settings: Settings, ids: list[str]) -> dict[str, int]:
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(
            select(ItemVector.item_id, func.count()).where(ItemVector.item_id.in_(ids)).group_by(ItemVector.item_id)
        ).all()
    return dict(rows)


@contextmanager
def worker(settings: Settings, log_name: str = "worker.log", *, wait: bool = True) -> Iterator[subprocess.Popen]:
    """One solo-pool worker process (SIGKILL takes the whole worker, no orphaned children).

    wait=False: do not ping it first (a busy solo worker answers pings only between tasks)."""
    process = start_worker(settings, concurrency=1, pool="solo", log_path=str(settings.home / log_name))
    try:
        if wait:
            wait_for_workers(settings, timeout=120)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)


class ApiProcess:
    """`mmrecall serve` as a child process, so that it can be killed and started again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ApiProcess:
        log = open(self.settings.home / "api.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(self.port), "--no-access-log"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_api(self.url, timeout=timeout)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill(self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


# --- fault scenarios -----------------------------------------------------------------------------


def worker_killed_mid_batch(home: Path, redis_url: str, n: int = 48) -> Outcome:
    """SIGKILL the worker while it encodes a batch; a new worker (redelivery + reconcile) finishes."""
    settings = scenario_settings(home, redis_url)
    records = make_items(settings, "k", n, size=800)  # large covers: a batch takes long enough to be hit
    ids = ingest_items(settings, records)  # queued before any worker runs
    outcome = Outcome("worker SIGKILL mid-batch", faults=1)
    with worker(settings, "worker-1.log", wait=False) as first:
        deadline = time.time() + 120
        while time.time() < deadline:
            found = statuses(settings, ids)
            if any(status == "encoding" for status, _ in found.values()):
                break
            time.sleep(0.002)
        kill(first)  # right after seeing a batch in flight (it decodes 8 large covers: ~0.2 s)
    at_kill = statuses(settings, ids)
    outcome.checks["encoding_seen"] = sum(s == "encoding" for s, _ in found.values())
    outcome.checks["encoding_at_kill"] = sum(s == "encoding" for s, _ in at_kill.values())
    outcome.checks["ready_at_kill"] = sum(s == "ready" for s, _ in at_kill.values())
    with worker(settings, "worker-2.log"):
        found = wait_terminal(settings, ids)
    rows = vector_rows_per_item(settings, ids)
    outcome.checks["max_vector_rows_per_item"] = max(rows.values(), default=0)
    outcome.checks["items_with_a_vector"] = len(rows)
    return tally(outcome, found, ids)


def redis_restarted_mid_ingest(home: Path, n: int = 48) -> Outcome:
    """Kill the broker (it keeps nothing on disk) mid-ingest and start it empty: reconcile restores all."""
    broker = PrivateRedis().start()
    try:
        settings = scenario_settings(home, broker.url)
        records = make_items(settings, "r", n, size=160)
        outcome = Outcome("Redis restart (data lost) mid-ingest", faults=1)
        with worker(settings):
            ids = ingest_items(settings, records)
            deadline = time.time() + 120
            while time.time() < deadline and not any(s == "ready" for s, _ in statuses(settings, ids).values()):
                time.sleep(0.01)
            broker.restart_empty()
            at_restart = statuses(settings, ids)
            outcome.checks["ready_at_restart"] = sum(s == "ready" for s, _ in at_restart.values())
            found = wait_terminal(settings, ids, timeout=180)
        outcome.checks["max_vector_rows_per_item"] = max(vector_rows_per_item(settings, ids).values(), default=0)
        return tally(outcome, found, ids)
    finally:
        broker.kill()


def _catalogue_with_snapshot(settings: Settings, n_items: int, n_synthetic: int) -> tuple[list[str], str]:
    """Real items encoded by a worker, plus synthetic vectors under the same version (so a reindex takes
    a few seconds), then a first snapshot. Returns (real ids, first snapshot name)."""
    ids = ingest_items(settings, make_items(settings, "s", n_items))
    found = wait_terminal(settings, ids)
    assert all(s == "ready" for s, _ in found.values()), found
    _store_synthetic(settings, 0, n_synthetic)
    with session_scope(settings.resolved_database_url) as session:
        job = catalogue.create_job(session, "reindex").id
    result = reindex(settings, job)
    return ids, result["snapshot"]


SYNTHETIC_RANK = 16


def _store_synthetic(settings: Settings, start: int, count: int) -> None:
    """Synthetic vectors under the encoder version of the real items (more rows: a longer reindex)."""
    with session_scope(settings.resolved_database_url) as session:
        version, dim = session.execute(select(ItemVector.version, ItemVector.dim).limit(1)).one()
        synthetic = [ItemRecord(id=f"syn{i:06d}", title=f"synthetic {i}") for i in range(start, start + count)]
        catalogue.upsert_items(session, synthetic)
        # low-rank, as real embeddings are: isotropic noise in 544 dimensions is the worst case for HNSW (its
        # v2v table needs 10x the search breadth, minutes per reindex) and says nothing about the faults
        rng = np.random.default_rng(start)
        vectors = rng.normal(size=(count, SYNTHETIC_RANK)) @ rng.normal(size=(SYNTHETIC_RANK, dim))
        vectors = (vectors + 0.1 * rng.normal(size=(count, dim))).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        catalogue.store_vectors(session, [r.id for r in synthetic], vectors, encoder="tiny-test", version=version)


def api_restarted_during_reindex(home: Path, redis_url: str, n_synthetic: int = 30_000, attempts: int = 3) -> Outcome:
    """Kill the API while a worker reindexes: the restarted API serves a whole snapshot (old, then new).

    The restarted API must answer while the reindex is still running, or nothing was tested: when the
    reindex ends before the API is back, the catalogue doubles and another reindex is tried (up to
    `attempts`); `window_requests` counts the requests answered inside the window."""
    settings = scenario_settings(home, redis_url)
    outcome = Outcome("API restart during reindex", faults=1)
    with worker(settings):
        ids, first = _catalogue_with_snapshot(settings, 16, n_synthetic)
        stored = n_synthetic
        api = ApiProcess(settings).start()
        try:
            for attempt in range(attempts):
                wait_for_workers(settings, timeout=120)  # a solo worker answers once its last task returned
                job_id = submit_job(settings, "reindex")
                _wait_job_state(settings, job_id, ("running", "succeeded", "failed"))
                outcome.checks["job_state_at_kill"] = _job(settings, job_id).state
                api.kill()
                api.start()
                served, similar_codes, window_requests = set(), set(), 0
                while _job(settings, job_id).state in ("queued", "running"):
                    served.add(httpx.get(f"{api.url}/healthz", timeout=5).json()["snapshot"])
                    similar_codes.add(httpx.get(f"{api.url}/v1/similar/{ids[0]}", timeout=5).status_code)
                    window_requests += 1
                    time.sleep(0.05)
                if window_requests or attempt == attempts - 1:
                    break
                _store_synthetic(settings, stored, stored)  # the reindex ended before the API was back
                stored *= 2
            job = _job(settings, job_id)
            final = _wait_served(api.url, job.result["snapshot"]) if job.state == "succeeded" else None
            served.add(final)
            outcome.checks.update(
                job_state=job.state,
                first_snapshot=first,
                new_snapshot=final,
                snapshots_served=sorted(s for s in served if s),
                similar_codes=sorted(similar_codes),
                window_requests=window_requests,
                attempts=attempt + 1,
                synthetic_items=stored,
            )
        finally:
            api.stop()
    return tally(outcome, statuses(settings, ids), ids)


def worker_killed_during_reindex(home: Path, redis_url: str, n_synthetic: int = 30_000) -> Outcome:
    """SIGKILL the worker mid-reindex: the old snapshot keeps serving, reconcile finds the job without a
    heartbeat and sends it again, and the next worker's run publishes the new snapshot."""
    settings = scenario_settings(home, redis_url)
    outcome = Outcome("worker SIGKILL during reindex", faults=1)
    with worker(settings, "worker-1.log") as first_worker:
        ids, first = _catalogue_with_snapshot(settings, 16, n_synthetic)
        api = ApiProcess(settings).start()
        job_id = submit_job(settings, "reindex")
        outcome.checks["job_state_at_kill"] = _wait_job_state(settings, job_id, ("running", "succeeded"))
        kill(first_worker)
    try:
        outcome.checks["current_after_kill"] = snapshots.current_snapshot(settings.snapshots_dir).name
        outcome.checks["served_after_kill"] = httpx.get(f"{api.url}/healthz", timeout=5).json()["snapshot"]
        outcome.checks["similar_after_kill"] = httpx.get(f"{api.url}/v1/similar/{ids[0]}", timeout=5).status_code
        with worker(settings, "worker-2.log"):
            # a ceiling, not an expectation: on a busy 2-core machine this 30k reindex took over 2 minutes
            _wait_job_state(settings, job_id, ("failed", "succeeded"), timeout=600)
            job = _job(settings, job_id)
            outcome.checks.update(
                first_snapshot=first, job_state=job.state, job_error=job.error, job_runs=job.params.get("attempt", 1)
            )
            if job.state == "succeeded":
                outcome.checks["served_after_rerun"] = _wait_served(api.url, job.result["snapshot"])
    finally:
        api.stop()
    return tally(outcome, statuses(settings, ids), ids)


def concurrent_same_id(home: Path, redis_url: str, clients: int = 8) -> Outcome:
    """Several clients ingest the same id at once over HTTP: one item, `ready`, one vector."""
    settings = scenario_settings(home, redis_url)
    outcome = Outcome("concurrent ingests of one id", faults=1)
    record = make_items(settings, "same", 1)[0]
    codes: list[int] = []
    with worker(settings):
        api = ApiProcess(settings).start()
        try:
            barrier = threading.Barrier(clients)

            def send(slot: int) -> None:
                body = {"items": [{**record.model_dump(), "title": f"{record.title} v{slot}"}]}
                barrier.wait()
                codes.append(httpx.post(f"{api.url}/v1/items", json=body, timeout=30).status_code)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            found = wait_terminal(settings, [record.id])
        finally:
            api.stop()
    with session_scope(settings.resolved_database_url) as session:
        outcome.checks["item_rows"] = session.scalar(select(func.count()).select_from(Item).where(Item.id == record.id))
    outcome.checks["codes"] = sorted(codes)
    outcome.checks["vector_rows"] = vector_rows_per_item(settings, [record.id]).get(record.id, 0)
    return tally(outcome, found, [record.id])


def _job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.resolved_database_url) as session:
        return catalogue.get_job(session, job_id)


def _wait_job_state(settings: Settings, job_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _job(settings, job_id).state
        if state in states:
            return state
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} never reached {states}")


def _wait_served(url: str, snapshot: str, timeout: float = 30) -> str | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        served = httpx.get(f"{url}/healthz", timeout=5).json()["snapshot"]
        if served == snapshot:
            return served
        time.sleep(0.1)
    return None


# --- bad input -----------------------------------------------------------------------------------


@dataclass
class BadInput:
    name: str
    send: Callable[[httpx.Client], httpx.Response]
    expect: int  # the HTTP status; 202 means accepted, and then `item` must end `failed` with a reason
    item: str | None = None


def bad_inputs(settings: Settings) -> list[BadInput]:
    """Every kind of bad input the service must turn into a clear 4xx or a `failed` item with a reason."""
    root = settings.media_roots[0]
    good = root / "good.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(good)
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_bytes(b"this is not an image")
    Image.new("1", (12_000, 12_000)).save(root / "bomb.png")  # 144 Mpx, a few KB on disk
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    outside = settings.home / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "escape.png").unlink(missing_ok=True)
    (root / "escape.png").symlink_to(outside)

    def item(item_id: str, **fields) -> Callable[[httpx.Client], httpx.Response]:
        return lambda http: http.post("/v1/items", json={"items": [{"id": item_id, "title": "t", **fields}]})

    def media(name: str, kind: str, file: str) -> BadInput:
        return BadInput(name, item(f"bad-{kind}-{file}", **{kind: str(root / file)}), 202, f"bad-{kind}-{file}")

    def upload(name: str, payload: bytes, expect: int) -> BadInput:
        return BadInput(
            name,
            lambda http: http.post("/v1/items/upload", data={"id": "bad-upload"}, files={"cover": ("x.png", payload)}),
            expect,
        )

    bomb = (root / "bomb.png").read_bytes()
    return [
        media("truncated image", "cover", "truncated.png"),
        media("non-image bytes", "cover", "text.png"),
        media("decompression bomb", "cover", "bomb.png"),
        media("zero-length video", "video", "empty.mp4"),
        media("undecodable video", "video", "junk.mp4"),
        media("missing file", "cover", "missing.png"),
        BadInput("absurd frame count", item("bad-frames", frames=[str(good)] * 10_000), 422),
        BadInput("empty item", lambda http: http.post("/v1/items", json={"items": [{"id": "bad-empty"}]}), 422),
        BadInput("huge title", item("bad-huge", title="x" * 20_000), 422),
        BadInput(
            "invalid UTF-8 body",
            lambda http: http.post(
                "/v1/items",
                content=b'{"items": [{"id": "bad-utf8", "title": "\xff\xfe"}]}',
                headers={"content-type": "application/json"},
            ),
            400,
        ),
        BadInput(
            "duplicate ids",
            lambda http: http.post(
                "/v1/items", json={"items": [{"id": "bad-dup", "title": "a"}, {"id": "bad-dup", "title": "b"}]}
            ),
            422,
        ),
        BadInput("unknown id (similar)", lambda http: http.get("/v1/similar/no-such-item"), 404),
        BadInput("unknown id (delete)", lambda http: http.delete("/v1/items/no-such-item"), 404),
        BadInput("unknown history (recall)", lambda http: http.post("/v1/recall", json={"history": ["nope"]}), 400),
        BadInput(
            "oversized body",
            lambda http: http.post(
                "/v1/items", content=b"x" * (settings.max_body_bytes + 1), headers={"content-type": "application/json"}
            ),
            413,
        ),
        BadInput("wrong types", lambda http: http.post("/v1/items", json={"items": [{"id": 5, "title": ["x"]}]}), 422),
        BadInput("wrong query type", lambda http: http.get("/v1/similar/x", params={"k": "many"}), 422),
        BadInput("path outside the roots", item("bad-outside", cover=str(outside)), 400),
        BadInput("dot-dot path", item("bad-dotdot", cover=str(root / ".." / "outside.png")), 400),
        BadInput("symlink escape", item("bad-link", cover=str(root / "escape.png")), 400),
        BadInput("URL host not allowed", item("bad-url", cover="http://example.com/a.png"), 400),
        BadInput("non-http URL", item("bad-scheme", cover="file:///etc/passwd"), 400),
        BadInput("NUL byte in a path", item("bad-nul", cover=str(root) + "/a\x00.png"), 400),
        BadInput(
            "NUL byte in an eval dataset path", lambda http: http.post("/v1/eval", json={"dataset": "data\x00/ml"}), 400
        ),
        upload("upload: not an image", b"GIF89a but not really", 400),
        upload("upload: empty", b"", 400),
        upload("upload: decompression bomb", bomb, 400),
        upload("upload: too large", b"\x89PNG" + b"\x00" * (settings.max_upload_bytes + 1), 413),
        BadInput(
            "bad interactions",
            lambda http: http.post(
                "/v1/interactions",
                json={"interactions": [{"user_id": "u", "item_id": "i", "timestamp": "yesterday-ish"}]},
            ),
            422,
        ),
    ]


def bad_input_run(home: Path, redis_url: str) -> Outcome:
    """Good items first; then every bad input; then the good items must be exactly as they were."""
    settings = scenario_settings(home, redis_url)
    outcome = Outcome("bad input")
    with worker(settings):
        api = ApiProcess(settings).start()
        try:
            good = ingest_items(settings, make_items(settings, "g", 6))
            wait_terminal(settings, good)
            before = _vectors(settings, good)
            cases = bad_inputs(settings)
            results: dict[str, tuple[int, int]] = {}
            accepted: list[str] = []
            with httpx.Client(base_url=api.url, timeout=60) as http:
                for case in cases:
                    status = case.send(http).status_code
                    results[case.name] = (status, case.expect)
                    if status == 202 and case.item:
                        accepted.append(case.item)
            found = wait_terminal(settings, accepted)
            after = _vectors(settings, good)
            after_status = statuses(settings, good)
        finally:
            api.stop()
    outcome.bad_inputs = len(cases)
    outcome.checks["responses"] = results
    outcome.checks["mismatched"] = {k: v for k, v in results.items() if v[0] != v[1]}
    outcome.checks["errors"] = {i: found[i][1] for i in accepted}
    tally(outcome, found, accepted)
    damaged = [i for i in good if after_status[i][0] != "ready" or not np.array_equal(before[i], after.get(i))]
    outcome.checks["good_items_damaged"] = damaged
    outcome.lost += len(damaged)
    return outcome


def _vectors(settings: Settings, ids: list[str]) -> dict[str, np.ndarray]:
    with session_scope(settings.resolved_database_url) as session:
        version = session.scalar(select(ItemVector.version).limit(1))
        return catalogue.get_vectors(session, version, ids)


# --- the report ----------------------------------------------------------------------------------

SCENARIOS = ("bad_input", "worker_kill", "redis_restart", "api_restart", "reindex_kill", "same_id")


def run(out: Path, redis_url: str = "redis://127.0.0.1:6379/0", **_kw) -> dict:
    import tempfile

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mmrecall-faults-") as tmp:
        base = Path(tmp)
        runs = {
            "bad_input": lambda: bad_input_run(base / "bad", redis_url),
            "worker_kill": lambda: worker_killed_mid_batch(base / "kill", redis_url),
            "redis_restart": lambda: redis_restarted_mid_ingest(base / "redis"),
            "api_restart": lambda: api_restarted_during_reindex(base / "api", redis_url),
            "reindex_kill": lambda: worker_killed_during_reindex(base / "reindex", redis_url),
            "same_id": lambda: concurrent_same_id(base / "same", redis_url),
        }
        for name in SCENARIOS:
            started = time.time()
            outcome = runs[name]()
            outcome.checks["seconds"] = round(time.time() - started, 1)
            outcomes.append(outcome)
            print(f"{outcome.name}: {outcome.row()} {outcome.checks}", flush=True)
    rows = [o.row() for o in outcomes]
    totals = {k: sum(r[k] for r in rows) for k in ("faults", "bad_inputs", "enqueued", "ready", "failed", "lost")}
    rows.append({"name": "total", **totals})
    print(table(rows, ["name", "faults", "bad_inputs", "enqueued", "ready", "failed", "lost"]))
    result = {**totals, "scenarios": [{**o.row(), "checks": o.checks} for o in outcomes]}
    write_result(out, "faults", result)
    return result
