"""`mmrecall serve --workers N`: one port, N real API processes, keep-alive connections spread evenly."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mmrecall.core.settings import Settings
from mmrecall.pipeline.balancer import haproxy_available, server_stats
from mmrecall.pipeline.runner import free_port, settings_env, wait_for_api


def answering_process(client: httpx.Client) -> int:
    return client.get("/healthz").json()["process"]


def processes_answering(url: str, connections: int) -> set[int]:
    """The API processes that answer `connections` connections open together (closed afterwards)."""
    clients = [httpx.Client(base_url=url) for _ in range(connections)]
    try:
        return {answering_process(c) for c in clients}
    finally:
        for client in clients:
            client.close()


def wait_until(check, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = check()
            if found:
                return found
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(check)


def start_serving(tmp_path: Path, *options: str) -> tuple[Settings, subprocess.Popen, str, Path]:
    """`mmrecall serve --workers 2 OPTIONS` in its own home: (settings, process, url, its log)."""
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*command, *options, "--no-access-log"], env=settings_env(settings), stdout=output, stderr=subprocess.STDOUT
        )
    return settings, server, f"http://127.0.0.1:{port}", log


@pytest.fixture
def served(tmp_path: Path):
    _settings, server, url, log = start_serving(tmp_path)
    try:
        try:
            wait_for_api(url, timeout=90)
            # both processes ready: connections opened together land on two different ones
            wait_until(lambda: len(processes_answering(url, 2)) == 2, 90)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"the API did not come up with 2 processes:\n{log.read_text()[-3000:]}") from exc
        time.sleep(0.5)  # the processes report those connections closed
        yield url, server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


def test_keep_alive_connections_are_spread_evenly_and_a_dead_process_is_replaced(served) -> None:
    url, server = served
    clients = [httpx.Client(base_url=url) for _ in range(6)]  # one keep-alive connection each
    owners = [answering_process(c) for c in clients]
    assert sorted(collections.Counter(owners).values()) == [3, 3]
    assert all(answering_process(c) == owner for c, owner in zip(clients, owners, strict=True))  # kept alive
    # two connections of one process close: the next two connections go to it
    busy = owners[0]
    for client in [c for c, owner in zip(clients, owners, strict=True) if owner == busy][:2]:
        client.close()
    time.sleep(0.5)  # the process reports the closes
    newcomers = [httpx.Client(base_url=url) for _ in range(2)]
    assert [answering_process(c) for c in newcomers] == [busy, busy]
    # a process killed outright: its clients see errors, the port keeps answering, another process starts
    os.kill(busy, signal.SIGKILL)
    replacement = wait_until(lambda: processes_answering(url, 4) - set(owners))
    assert len(replacement) == 1 and server.poll() is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    for client in clients + newcomers:
        client.close()


def test_a_busy_process_gets_new_connections_as_soon_as_its_old_ones_end(served) -> None:
    """A process that cannot report anything (stopped, as a process busy with queued requests is late to)
    still counts as free once its clients leave: the parent sees the connections end itself. Counting
    only what the processes report, the newcomers went to the other process (2/4 instead of 3/3)."""
    url, _server = served
    clients = [httpx.Client(base_url=url) for _ in range(6)]
    owners = [answering_process(c) for c in clients]
    busy = owners[0]
    os.kill(busy, signal.SIGSTOP)
    try:
        for client, owner in zip(clients, owners, strict=True):
            if owner == busy:
                client.close()
        time.sleep(0.5)
        newcomers = [httpx.Client(base_url=url, timeout=30) for _ in range(3)]
        with ThreadPoolExecutor(3) as pool:  # connected now; answered once the process runs again
            answers = [pool.submit(answering_process, c) for c in newcomers]
            time.sleep(0.5)
            os.kill(busy, signal.SIGCONT)
            assert [a.result() for a in answers] == [busy] * 3
    finally:
        os.kill(busy, signal.SIGCONT)
    for client in clients + newcomers:
        client.close()


def test_a_process_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    code = (
        "from api.balanced import serve_balanced; raise SystemExit(serve_balanced('no_such_module:app', 2, "
        f"host='127.0.0.1', port={free_port()}, options={{}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 1 and "failed to start" in done.stderr


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_spreads_each_request_and_routes_around_a_dead_process(tmp_path: Path) -> None:
    """`mmrecall serve --workers 2 --balancer haproxy`: one keep-alive client's requests go to both processes
    (leastconn per request, not per connection); HAProxy's stats count them; a process killed outright costs
    no request (retried on the other) and is started again; SIGTERM stops everything cleanly."""
    settings, server, url, log = start_serving(tmp_path, "--balancer", "haproxy")
    try:
        try:
            wait_for_api(url, timeout=120)
        except RuntimeError as exc:
            raise AssertionError(f"the API did not come up behind HAProxy:\n{log.read_text()[-3000:]}") from exc
        with httpx.Client(base_url=url) as client:  # one keep-alive connection
            owners = collections.Counter(answering_process(client) for _ in range(20))
        assert len(owners) == 2 and min(owners.values()) >= 5, owners
        stats = server_stats(settings.home / "haproxy.sock")
        assert len(stats) == 2 and all(s["total"] >= 5 and s["status"].startswith("UP") for s in stats.values()), stats
        victim = next(iter(owners))
        os.kill(victim, signal.SIGKILL)
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [client.get("/healthz") for _ in range(30)]
        assert all(a.status_code == 200 for a in answers)  # retried on the live process
        replacement = wait_until(lambda: processes_answering(url, 4) - set(owners), 120)
        assert len(replacement) == 1 and server.poll() is None
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
