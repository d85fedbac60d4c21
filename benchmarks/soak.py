"""`mmrecall bench soak`: mixed load for minutes on a real API (HAProxy in front of two processes), two
Celery workers, Redis and PostgreSQL, with faults arriving while it runs.

Traffic (locust, `soak_traffic.py`): reads at a steady rate, interactions appended, new items uploaded
with covers, bad inputs. Meanwhile: one `train` (G from the catalogue, then re-encode, reindex, swap), two
reindexes, a worker SIGKILLed and started again every `kill_every` (5 minutes in a 30-minute run), and once
each: Redis restarted empty, one API process SIGKILLed, PostgreSQL stopped for 60 s. Afterwards it counts
what became of every acknowledged item and interaction, checks every snapshot that served, and writes the
JSON record and a plot over time (latency per route and minute, errors, memory per process, faults).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from mmrecall.benchmarks.common import table, write_result
from mmrecall.benchmarks.faults import isolated_settings, make_items, wait_terminal
from mmrecall.core.interchange import InteractionRecord, ItemRecord
from mmrecall.core.settings import Settings
from mmrecall.pipeline.balancer import haproxy_available
from mmrecall.pipeline.ingest import ingest_items
from mmrecall.pipeline.reindex import reindex
from mmrecall.pipeline.runner import (
    PrivatePostgres,
    PrivateRedis,
    free_port,
    settings_env,
    start_worker,
    wait_for_api,
    wait_for_workers,
)
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import Interaction, ItemVector, Job, session_scope

SCALES = {"1k": 1_000, "10k": 10_000, "100k": 100_000, "1m": 1_000_000}
USERS = 2_000  # users with a stored history (20 interactions each) before the run
READ_RPS = 20.0  # /v1/recall and /v1/similar together, from 8 locust users
WRITE_RPS = 2.0  # the writer's requests: interactions (6 of 8), uploads (1 of 8), bad inputs (1 of 8)
WARM_UP_S = 30.0  # the first seconds of load are not part of the quiet baseline
GRACE_S = 15.0  # a fault's window ends this long after it was repaired
PG_DOWN_S = 60.0
SAMPLE_S = 5.0  # memory and served-snapshot sampling
SETTLE_S = 60.0  # a process's first minute (imports, models loaded) is not counted as growth
READ_ROUTES = ("recall", "recall_user", "similar")
ITEM_FATES = ("enqueued", "ready", "failed", "lost")
# the recovery settings of a deployment that expects faults: stuck items re-queued after a minute, a job
# whose heartbeat stopped (its worker died) failed after three (longer than the database outage)
# job_attempts: a worker is killed every 5 minutes here, far more often than anywhere real, so a training
# gets more runs than the default 3 to go on from where each was killed
RECOVERY = {
    "reconcile_after_s": 60.0,
    "reconcile_every_s": 15.0,
    "job_stale_after_s": 180.0,
    "refresh_interval_s": 1.0,
    "job_attempts": 6,
}


@dataclass
class Fault:
    name: str
    start: float
    end: float = 0.0  # when it was repaired (0: not yet)
    note: str = ""


def schedule(minutes: float) -> list[tuple[float, str]]:
    """(seconds after the load starts, action), in the proportions of a 30-minute run."""
    scale = minutes / 30.0
    plan = [(6 * 60 * scale, "train"), (12 * 60 * scale, "reindex"), (22 * 60 * scale, "reindex")]
    plan += [(9 * 60 * scale, "redis_restart"), (15.5 * 60 * scale, "api_kill"), (18 * 60 * scale, "postgres_stop")]
    every = 5 * 60 * scale
    plan += [(every * k, "worker_kill") for k in range(1, int(minutes * 60 / every)) if every * k < minutes * 60]
    return sorted(plan)


# --- the stack --------------------------------------------------------------------------------------------


class Stack:
    """PostgreSQL, Redis, the API (HAProxy + 2 processes, or uvicorn's workers) and two solo workers."""

    def __init__(self, home: Path, database_url: str | None) -> None:
        self.home = home
        self.postgres = None if database_url else PrivatePostgres(home / "postgres").init()
        self.redis = PrivateRedis().start()
        url = database_url or self.postgres.url  # type: ignore[union-attr]
        self.settings = isolated_settings(
            home, self.redis.url, queue_prefix="mmrecall-soak", database_url=url, **RECOVERY
        )
        self.workers: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.balancer = "haproxy" if haproxy_available() else "uvicorn"

    def start_worker(self) -> subprocess.Popen:
        log = str(self.home / f"worker-{len(self.workers)}.log")
        os.environ["MMRECALL_TORCH_THREADS"] = "1"  # two workers beside the API on a small machine
        try:
            worker = start_worker(self.settings, concurrency=1, pool="solo", log_path=log)
        finally:
            del os.environ["MMRECALL_TORCH_THREADS"]
        self.workers.append(worker)
        return worker

    def start_api(self) -> None:
        command = [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(self.port), "--workers", "2"]
        log = open(self.home / "api.log", "ab")  # noqa: SIM115 - lives with the process
        self.api = subprocess.Popen(
            [*command, "--balancer", self.balancer, "--no-access-log"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_api(self.url, timeout=300)

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def api_processes(self) -> list[psutil.Process]:
        """The API server processes behind the front (each `serve --workers 1`, or uvicorn's children)."""
        if self.api is None:
            return []
        children = psutil.Process(self.api.pid).children(recursive=True)
        return [p for p in children if _is_api(p)]

    def processes(self) -> dict[str, psutil.Process]:
        """role -> process, for memory sampling."""
        out: dict[str, psutil.Process] = {}
        for process in self.api_processes():
            out[f"api:{process.pid}"] = process
        for worker in self.live_workers():
            process = psutil.Process(worker.pid)
            out[f"worker:{worker.pid}"] = process
            for child in process.children(recursive=True):  # a job's own process (pipeline/isolated.py)
                out[f"job:{child.pid}"] = child
        return out

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, *([self.api] if self.api else [])]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.kill()
        if self.postgres is not None:
            self.postgres.destroy()


def _is_api(process: psutil.Process) -> bool:
    try:
        line = process.cmdline()
    except psutil.Error:
        return False
    return ("serve" in line and "--port" in line) or any("uvicorn" in part for part in line[:3])


# --- the catalogue before the run ------------------------------------------------------------------------


def build_catalogue(stack: Stack, n: int, rng: np.random.Generator) -> str:
    """A few real items encoded by a worker (their encoder version), `n` synthetic ones under it, USERS
    users with 20 interactions each, then the first snapshot. Returns its name."""
    settings = stack.settings
    real = ingest_items(settings, make_items(settings, "seed", 16))
    found = wait_terminal(settings, real, timeout=300)
    if not all(status == "ready" for status, _ in found.values()):
        raise RuntimeError(f"the seed items were not encoded: {found}")
    with session_scope(settings.resolved_database_url) as session:
        version, dim = session.execute(select(ItemVector.version, ItemVector.dim).limit(1)).one()
    basis = rng.normal(size=(16, dim))
    for start in range(0, n, 10_000):  # low-rank, as real embeddings are (see benchmarks.faults)
        count = min(10_000, n - start)
        records = [
            ItemRecord(id=f"syn{i:06d}", title=f"synthetic {i}", tags=[f"cat{i % 50}"])
            for i in range(start, start + count)
        ]
        vectors = rng.normal(size=(count, 16)) @ basis + 0.1 * rng.normal(size=(count, dim))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        with session_scope(settings.resolved_database_url) as session:
            catalogue.upsert_items(session, records)
            catalogue.store_vectors(session, [r.id for r in records], vectors, encoder="tiny-test", version=version)
    now = time.time() - 86_400
    rows = [
        InteractionRecord(user_id=f"soak-u{u}", item_id=f"syn{int(i):06d}", timestamp=now + u + j, event="click")
        for u in range(USERS)
        for j, i in enumerate(rng.integers(n, size=20))
    ]
    with session_scope(settings.resolved_database_url) as session:
        catalogue.add_interactions(session, rows)
    with session_scope(settings.resolved_database_url) as session:
        job = catalogue.create_job(session, "reindex").id
    return reindex(settings, job)["snapshot"]


# --- the run ----------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every SAMPLE_S: each API and worker process's resident memory, and the snapshot /healthz serves."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.memory: list[tuple[float, str, float]] = []  # (t, role, rss MB)
        self.served: list[tuple[float, str | None]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            now = time.time()
            try:
                processes = self.stack.processes()
            except psutil.Error:  # a process went between listing and reading: the next sample has it
                continue
            for role, process in processes.items():
                try:
                    self.memory.append((now, role, process.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            try:
                self.served.append((now, httpx.get(f"{self.stack.url}/healthz", timeout=5).json().get("snapshot")))
            except (httpx.HTTPError, ValueError):
                self.served.append((now, None))


def start_locust(stack: Stack, minutes: float, n: int, log_path: Path) -> subprocess.Popen:
    locustfile = Path(__file__).with_name("soak_traffic.py")
    env = {
        **os.environ,
        "SOAK_LOG": str(log_path),
        "SOAK_ITEMS": str(n),
        "SOAK_USERS": str(USERS),
        "SOAK_READ_RPS": str(READ_RPS),
        "SOAK_WRITE_RPS": str(WRITE_RPS),
        "SOAK_PREFIX": f"new{int(time.time()) % 100000}-",
    }
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", stack.url]
    command += ["--users", "9", "--spawn-rate", "9", "--run-time", f"{int(minutes * 60)}s", "--only-summary"]
    command += ["--loglevel", "WARNING", "--stop-timeout", "10", "--exit-code-on-error", "0"]
    return subprocess.Popen(command, env=env, stdout=open(stack.home / "locust.log", "ab"), stderr=subprocess.STDOUT)


def submit(stack: Stack, path: str, body: dict | None = None) -> str | None:
    """A job through the API, as an operator would; its id (None when the API refused it)."""
    try:
        answer = httpx.post(f"{stack.url}{path}", json=body or {}, timeout=30)
    except httpx.HTTPError:
        return None
    return answer.json().get("job_id") if answer.status_code == 202 else None


def inject(stack: Stack, action: str, faults: list[Fault], jobs: list[dict]) -> None:
    """One scheduled action: a job submitted, or a fault injected and repaired (its window recorded)."""
    now = time.time()
    if action in ("train", "reindex"):
        path, body = ("/v1/train", {"epochs": 1}) if action == "train" else ("/v1/reindex", None)
        jobs.append({"kind": action, "submitted": now, "job_id": submit(stack, path, body)})
        return
    fault = Fault(action, now)
    faults.append(fault)
    if action == "worker_kill":
        victim = min(stack.live_workers(), key=lambda w: w.pid)  # the oldest one: each lives two periods
        fault.note = f"SIGKILL worker pid {victim.pid}"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
        stack.start_worker()
        fault.note += answering(stack)
    elif action == "redis_restart":
        stack.redis.restart_empty()
        fault.note = "Redis killed and started empty (queued tasks lost)" + answering(stack)
    elif action == "api_kill":
        victim = stack.api_processes()[0]
        fault.note = f"SIGKILL API process pid {victim.pid} ({stack.balancer} in front)"
        victim.kill()
        deadline = time.time() + 120
        while time.time() < deadline and (len(stack.api_processes()) < 2 or not _all_answer(stack)):
            time.sleep(0.5)
    elif action == "postgres_stop":
        if stack.postgres is None:
            fault.note = "skipped: the database is not this run's own server"
        else:
            stack.postgres.stop()
            time.sleep(PG_DOWN_S)
            stack.postgres.start()
            fault.note = f"PostgreSQL stopped (fast shutdown) for {PG_DOWN_S:.0f} s"
    fault.end = time.time()


def answering(stack: Stack, timeout: float = 120) -> str:
    """Until a worker answers a ping again (a solo worker inside a long job answers none: one is enough)."""
    started = time.time()
    try:
        wait_for_workers(stack.settings, timeout=timeout)
    except TimeoutError:
        return f"; no worker answered within {timeout:.0f} s"
    return f"; a worker answered after {time.time() - started:.1f} s"


def _all_answer(stack: Stack) -> bool:
    try:
        return all(httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200 for _ in range(4))
    except httpx.HTTPError:
        return False


def follow_jobs(stack: Stack, jobs: list[dict]) -> None:
    """Refresh each job's state and its runs (reconcile sends a job whose worker was lost again: the
    service's own recovery, nothing here resubmits)."""
    try:
        with session_scope(stack.settings.resolved_database_url) as session:
            for job in [j for j in jobs if j["job_id"] and j.get("state") not in ("succeeded", "failed")]:
                found = session.get(Job, job["job_id"])
                if found is not None:
                    snapshot = (found.result or {}).get("snapshot")
                    runs = int((found.params or {}).get("attempt", 1))
                    job.update(state=found.state, error=found.error, result_snapshot=snapshot, runs=runs)
                    if found.result and "resumed_after_epoch" in found.result:
                        job["resumed_after_epoch"] = found.result["resumed_after_epoch"]
    except OperationalError:  # the database is down (a fault window): look again later
        return


def wait_jobs(stack: Stack, jobs: list[dict], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        follow_jobs(stack, jobs)
        if all(j.get("state") in ("succeeded", "failed") for j in jobs if j["job_id"]):
            return
        time.sleep(2)


# --- what it found ----------------------------------------------------------------------------------------


def read_log(path: Path) -> tuple[list[dict], list[str], list[tuple[str, str, float]], list[dict]]:
    requests, items, interactions, bad = [], [], [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "acked_item" in record:
            items.append(record["acked_item"])
        elif "acked_interactions" in record:
            interactions.extend(tuple(row) for row in record["acked_interactions"])
        elif "bad_input" in record:
            bad.append(record)
        else:
            requests.append(record)
    return requests, items, interactions, bad


def in_window(t: float, faults: list[Fault]) -> str | None:
    for fault in faults:
        if fault.start - 1.0 <= t <= (fault.end or fault.start) + GRACE_S:
            return fault.name
    return None


def p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def latency_by_minute(requests: list[dict], t0: float) -> list[dict]:
    rows = []
    for minute in range(int((max(r["t"] for r in requests) - t0) // 60) + 1):
        chunk = [r for r in requests if minute <= (r["t"] - t0) / 60 < minute + 1]
        row: dict = {"minute": minute, "requests": len(chunk)}
        for route in (*READ_ROUTES, "interactions", "upload"):
            ms = [r["ms"] for r in chunk if r["route"] == route and 200 <= r["status"] < 300]
            row[f"{route}_p50_ms"], row[f"{route}_p99_ms"] = p(ms, 50), p(ms, 99)
        row["errors"] = {
            str(s): sum(r["status"] == s for r in chunk)
            for s in sorted({r["status"] for r in chunk})
            if s >= 500 or s == 0
        }
        rows.append(row)
    return rows


def memory_growth(samples: list[tuple[float, str, float]], end: float, window_s: float) -> dict[str, dict]:
    """Per process: resident MB at the start and end of its part of the last `window_s` (medians of three
    samples), and the growth."""
    out = {}
    for role in sorted({role for _, role, _ in samples if not role.startswith("job:")}):  # jobs: job_processes
        born = min(t for t, r, _ in samples if r == role)  # its first minute loads models: not growth
        series = [(t, mb) for t, r, mb in samples if r == role and t >= max(end - window_s, born + SETTLE_S)]
        if len(series) < 6:
            continue
        first = float(np.median([mb for _, mb in series[:3]]))
        last = float(np.median([mb for _, mb in series[-3:]]))
        out[role] = {
            "from_s": round(series[0][0] - (end - window_s), 0),
            "span_s": round(series[-1][0] - series[0][0], 0),
            "rss_mb_first": round(first, 1),
            "rss_mb_last": round(last, 1),
            "growth": round(last / first - 1, 3),
        }
    return out


def job_processes(samples: list[tuple[float, str, float]], t0: float) -> dict[str, dict]:
    """Each job's own process: when it was seen, for how long, and its peak resident MB (its memory goes
    back to the system when it exits, so growth is not a question for it)."""
    out = {}
    for role in sorted({role for _, role, _ in samples if role.startswith("job:")}):
        series = [(t, mb) for t, r, mb in samples if r == role]
        out[role] = {
            "seen_from_s": round(series[0][0] - t0, 0),
            "seen_for_s": round(series[-1][0] - series[0][0], 0),
            "peak_rss_mb": round(max(mb for _, mb in series), 1),
        }
    return out


def stored_interactions(settings: Settings, acked: list[tuple[str, str, float]]) -> int:
    users = sorted({u for u, _, _ in acked})
    found: set[tuple[str, str, float]] = set()
    with session_scope(settings.resolved_database_url) as session:
        for start in range(0, len(users), 500):
            rows = session.execute(
                select(Interaction.user_id, Interaction.item_id, Interaction.timestamp).where(
                    Interaction.user_id.in_(users[start : start + 500])
                )
            )
            found.update((u, i, round(t, 3)) for u, i, t in rows)
    return sum((u, i, round(t, 3)) in found for u, i, t in acked)


def check_snapshots(settings: Settings, served: list[tuple[float, str | None]]) -> dict:
    """Every snapshot that served loads whole now (or was pruned); CURRENT names a whole one."""
    names = sorted({name for _, name in served if name})
    whole, pruned, broken = [], [], []
    for name in names:
        directory = settings.snapshots_dir / name
        if not directory.exists():
            pruned.append(name)
            continue
        try:
            snapshots.load_snapshot(directory)
            whole.append(name)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            broken.append(f"{name}: {exc}")
    current = snapshots.current_snapshot(settings.snapshots_dir)
    return {
        "served": names,
        "whole": whole,
        "pruned": pruned,
        "broken": broken,
        "current": current.name if current else None,
    }


def check_models(settings: Settings) -> dict:
    """Every trained G checkpoint folder holds its config and weights (a model is whole or absent)."""
    folders = [p for p in (settings.home / "checkpoints" / "g").glob("*") if p.is_dir()]
    partial = [p.name for p in folders if not (p / "encoder.json").is_file()]
    return {"checkpoints": len(folders), "partial": partial}


def plot(path: Path, requests: list[dict], memory: list, faults: list[Fault], jobs: list[dict], t0: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, errors, rss) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    bins = np.arange(0, (max(r["t"] for r in requests) - t0) / 60 + 0.5, 0.5)
    for route in READ_ROUTES:
        ms = [(r["t"] - t0, r["ms"]) for r in requests if r["route"] == route and 200 <= r["status"] < 300]
        xs = [b for b in bins if any(b * 60 <= t < (b + 0.5) * 60 for t, _ in ms)]
        ys = [np.percentile([m for t, m in ms if b * 60 <= t < (b + 0.5) * 60], 99) for b in xs]
        latency.plot(xs, ys, label=f"{route} p99")
    latency.set_ylabel("ms (p99 per 30 s)")
    latency.set_yscale("log")
    latency.legend(loc="upper right")
    bad = [(r["t"] - t0) / 60 for r in requests if r["status"] >= 500 or r["status"] == 0]
    errors.hist(bad, bins=bins, color="tab:red", label="5xx or no answer")
    errors.set_ylabel("errors per 30 s")
    errors.legend(loc="upper right")
    for role in sorted({role for _, role, _ in memory}):
        series = [((t - t0) / 60, mb) for t, r, mb in memory if r == role]
        rss.plot([s[0] for s in series], [s[1] for s in series], label=role)
    rss.set_ylabel("resident MB")
    rss.set_xlabel("minutes")
    rss.legend(loc="upper left", fontsize=7, ncol=3)
    for axis in (latency, errors, rss):
        for fault in faults:
            axis.axvspan(
                (fault.start - t0) / 60, ((fault.end or fault.start) - t0) / 60 + 0.05, color="grey", alpha=0.3
            )
        for job in jobs:
            axis.axvline((job["submitted"] - t0) / 60, color="tab:green", linestyle=":")
    latency.set_title("soak: read p99, errors, memory (grey: fault windows; green: train/reindex submitted)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(out: Path, scale: str = "100k", minutes: float = 30.0, database_url: str | None = None, **_kw) -> dict:
    if importlib.util.find_spec("locust") is None:
        raise RuntimeError("the soak's load generator is locust: pip install 'mmrecall[bench]'")
    n = SCALES.get(scale, SCALES["100k"])
    rng = np.random.default_rng(0)
    home = Path(tempfile.mkdtemp(prefix="mmrecall-soak-"))
    os.chmod(home, 0o755)  # the private PostgreSQL's user reaches its folder inside
    stack = Stack(home, database_url)
    result: dict = {"scale": scale, "items": n, "minutes": minutes, "users": USERS, "recovery_settings": RECOVERY}
    faults: list[Fault] = []
    jobs: list[dict] = []
    try:
        stack.start_worker()
        stack.start_worker()
        wait_for_workers(stack.settings, timeout=180, count=2)
        started = time.time()
        result["first_snapshot"] = build_catalogue(stack, n, rng)
        result["build_s"] = round(time.time() - started, 1)
        stack.start_api()
        log_path = home / "requests.jsonl"
        sampler = Sampler(stack)
        sampler.start()
        t0 = time.time()
        locust = start_locust(stack, minutes, n, log_path)
        for at, action in schedule(minutes):
            while time.time() < t0 + at:
                time.sleep(min(5.0, max(0.0, t0 + at - time.time())))
                follow_jobs(stack, jobs)
            if locust.poll() is not None:
                if time.time() < t0 + minutes * 60 - 5:
                    raise RuntimeError(f"locust exited early: see {home / 'locust.log'}")
                break  # a fault that outlasted the load (the 60 s outage in a short run) pushed the rest past it
            print(f"[{(time.time() - t0) / 60:5.1f} min] {action}", flush=True)
            inject(stack, action, faults, jobs)
        locust.wait(max(60.0, t0 + minutes * 60 + 60 - time.time()))
        load_end = time.time()
        sampler.done.set()
        requests, items, interactions, bad = read_log(log_path)
        # drain: every acknowledged item must end ready or failed with a reason; the jobs must end
        found = wait_terminal(stack.settings, items, timeout=600)
        wait_jobs(stack, jobs, timeout=1200)
        ready = sum(found.get(i, ("", None))[0] == "ready" for i in items)
        failed = sum(found.get(i, ("", None))[0] == "failed" and bool(found[i][1]) for i in items)
        result["items_lost_ids"] = [i for i in items if found.get(i, ("", None))[0] not in ("ready", "failed")][:20]
        result["items"] = {
            "enqueued": len(items),
            "ready": ready,
            "failed": failed,
            "lost": len(items) - ready - failed,
        }
        stored = stored_interactions(stack.settings, interactions)
        result["interactions"] = {
            "acknowledged": len(interactions),
            "stored": stored,
            "lost": len(interactions) - stored,
        }
        result["snapshots"] = check_snapshots(stack.settings, sampler.served)
        result["models"] = check_models(stack.settings)
        result["jobs"] = jobs
        result["faults"] = [
            {**asdict(f), "start_s": round(f.start - t0, 1), "end_s": round(f.end - t0, 1)} for f in faults
        ]
        result.update(summarise(requests, faults, t0, load_end))
        result["bad_inputs"] = summarise_bad(bad)
        result["memory_last_20_min"] = memory_growth(sampler.memory, load_end, 20 * 60)
        result["job_processes"] = job_processes(sampler.memory, t0)
        result["by_minute"] = latency_by_minute(requests, t0)
        result["balancer"] = stack.balancer
        out.mkdir(parents=True, exist_ok=True)
        plot(out / "soak.png", requests, sampler.memory, faults, jobs, t0)
        result["plot"] = "soak.png"
    except BaseException:
        stack.stop()
        print(f"the soak failed: its processes' logs are in {home}", file=sys.stderr)
        raise
    stack.stop()
    shutil.rmtree(home, ignore_errors=True)
    print_summary(result)
    write_result(out, "soak", result)
    return result


def summarise(requests: list[dict], faults: list[Fault], t0: float, end: float) -> dict:
    """Errors inside and outside the fault windows; read p99 outside them against the quiet p99 (after the
    warm-up, before the first fault or job)."""
    first_event = min([f.start for f in faults], default=end)
    quiet = [
        r["ms"]
        for r in requests
        if r["route"] in READ_ROUTES and 200 <= r["status"] < 300 and t0 + WARM_UP_S <= r["t"] < first_event
    ]
    outside = [r for r in requests if in_window(r["t"], faults) is None]
    reads_outside = [r["ms"] for r in outside if r["route"] in READ_ROUTES and 200 <= r["status"] < 300]
    errors = [r for r in requests if r["status"] >= 500 or r["status"] == 0]
    errors_outside = [r for r in errors if in_window(r["t"], faults) is None]
    by_status: dict[str, int] = {}
    for r in requests:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
    by_window: dict[str, int] = {}
    reasons: dict[str, str] = {}  # one reason the client was given, for each (window, route, status)
    for r in errors:
        name = f"{in_window(r['t'], faults) or 'outside'} {r['route']} {r['status']}"
        by_window[name] = by_window.get(name, 0) + 1
        reasons.setdefault(name, r.get("reason", ""))
    return {
        "requests": len(requests),
        "status_counts": by_status,
        "errors_5xx_by_window": by_window,
        "error_reasons": reasons,
        "errors_5xx_outside_windows": len(errors_outside),
        "degraded_reads": sum(bool(r.get("degraded")) for r in requests),
        "errors_outside_examples": errors_outside[:10],
        "errors_without_reason": sum(not r.get("reason") for r in errors),
        "error_503_without_retry_after": sum(r["status"] == 503 and not r.get("retry_after") for r in errors),
        "quiet_read_p99_ms": p(quiet, 99),
        "quiet_reads": len(quiet),
        "outside_read_p99_ms": p(reads_outside, 99),
        "outside_reads": len(reads_outside),
        "read_p99_ratio": round(p(reads_outside, 99) / p(quiet, 99), 2) if quiet and reads_outside else None,
        "read_p99_by_route_ms": {
            route: p([r["ms"] for r in outside if r["route"] == route and 200 <= r["status"] < 300], 99)
            for route in READ_ROUTES
        },
    }


def summarise_bad(bad: list[dict]) -> list[dict]:
    rows: dict[str, dict] = {}
    for record in bad:
        row = rows.setdefault(
            record["bad_input"],
            {"input": record["bad_input"], "expected": record["expected"], "sent": 0, "as_expected": 0},
        )
        row["sent"] += 1
        row["as_expected"] += record["status"] == record["expected"] and bool(record["reason"])
        row.setdefault("reason", record["reason"])
        row["last_status"] = record["status"]
    return list(rows.values())


def print_summary(result: dict) -> None:
    items, interactions = result.get("items", {}), result.get("interactions", {})
    rows = [
        {"what": "items enqueued / ready / failed / lost", "value": "/".join(str(items.get(k)) for k in ITEM_FATES)},
        {
            "what": "interactions acknowledged / stored",
            "value": f"{interactions.get('acknowledged')} / {interactions.get('stored')}",
        },
        {"what": "5xx outside fault windows", "value": result.get("errors_5xx_outside_windows")},
        {"what": "5xx without a reason", "value": result.get("errors_without_reason")},
        {
            "what": "read p99 quiet / outside windows (ms)",
            "value": f"{result.get('quiet_read_p99_ms')} / {result.get('outside_read_p99_ms')}",
        },
        {"what": "snapshots broken", "value": len(result.get("snapshots", {}).get("broken", []))},
    ]
    print(table(rows, ["what", "value"]))
    memory = [{"process": k, **v} for k, v in result.get("memory_last_20_min", {}).items()]
    if memory:
        print(table(memory, ["process", "span_s", "rss_mb_first", "rss_mb_last", "growth"]))
    job_processes = [{"process": k, **v} for k, v in result.get("job_processes", {}).items()]
    if job_processes:
        print(table(job_processes, ["process", "seen_from_s", "seen_for_s", "peak_rss_mb"]))
