"""`mmrecall serve --workers N`: N real API processes on one port, under uvicorn's supervisor or behind
HAProxy (each request to the process with the fewest in flight)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mmrecall.core.settings import Settings
from mmrecall.pipeline.balancer import haproxy_available, haproxy_binary, haproxy_config, server_stats
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


def test_uvicorn_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    """`mmrecall serve --workers 2` (uvicorn's supervisor): two processes answer on one port; one killed
    outright is replaced while the port keeps answering; SIGTERM stops them all."""
    _settings, server, url, log = start_serving(tmp_path)
    try:
        try:
            wait_for_api(url, timeout=90)
            owners = wait_until(lambda: both if len(both := processes_answering(url, 8)) == 2 else None, 90)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"the API did not come up with 2 processes:\n{log.read_text()[-3000:]}") from exc
        victim = next(iter(owners))
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: processes_answering(url, 2))  # the other process answers meanwhile
        replacement = wait_until(lambda: processes_answering(url, 8) - owners, 90)
        assert len(replacement) == 1 and server.poll() is None
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


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


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_answers_its_own_503_with_a_reason_and_retry_after(tmp_path: Path) -> None:
    """No API process free (here: none listening): HAProxy's own 503 says why and when to retry, as the
    API's 503s do, instead of its HTML page."""
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config("127.0.0.1", port, [("127.0.0.1", free_port())], tmp_path / "haproxy.sock"))
    proxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    try:
        wait_until_listening = time.time() + 10
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/recall", json={"history": []}, timeout=10)
                break
            except httpx.ConnectError:
                assert time.time() < wait_until_listening
                time.sleep(0.1)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "no API process is free" in answer.json()["detail"]
    finally:
        proxy.terminate()
        proxy.wait(10)


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_sends_reads_in_flight_on_a_killed_process_to_the_other(tmp_path: Path) -> None:
    """Requests in flight on an API process that is SIGKILLed (here: stopped first, so they wait on it) are
    answered by the other process, not dropped."""
    from concurrent.futures import ThreadPoolExecutor

    settings, server, url, log = start_serving(tmp_path, "--balancer", "haproxy")
    try:
        wait_for_api(url, timeout=120)
        victim = wait_until(lambda: processes_answering(url, 4) if len(processes_answering(url, 4)) == 2 else None)
        victim = next(iter(victim))
        os.kill(victim, signal.SIGSTOP)
        with ThreadPoolExecutor(8) as pool:
            reads = [pool.submit(httpx.get, f"{url}/healthz", timeout=60) for _ in range(8)]
            reads += [pool.submit(httpx.post, f"{url}/v1/recall", json={"history": []}, timeout=60) for _ in range(4)]
            in_flight = wait_until(
                lambda: sum(s["current"] for s in server_stats(settings.home / "haproxy.sock").values()) or None, 10
            )
            assert in_flight, "no request was waiting on the stopped process"
            os.kill(victim, signal.SIGKILL)
            answers = [r.result() for r in reads]
        assert [a.status_code for a in answers] == [200] * 12  # each answered (a cold user's recall: fallback)
        assert all(a.json()["process"] != victim for a in answers[:8])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_sends_a_write_no_second_time_and_says_why(tmp_path: Path) -> None:
    """A server that takes a request and closes without answering (a process dying mid-request): HAProxy
    tries a read again, but sends a write once only (it may have been applied) and answers it with a JSON
    502 and the reason."""
    import socket
    import threading

    received: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    backend_port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                request = connection.recv(65536).decode(errors="replace")
                line = request.split("\r\n", 1)[0]
                if " /healthz " in line:  # healthy to HAProxy's checks, so requests are sent to it
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                else:
                    received.append(line)  # and closed unanswered

    threading.Thread(target=serve, daemon=True).start()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config("127.0.0.1", port, [("127.0.0.1", backend_port)], tmp_path / "haproxy.sock"))
    proxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200, 10)
        received.clear()
        write = httpx.post(f"http://127.0.0.1:{port}/v1/interactions", json=[], timeout=30)
        assert write.status_code == 502 and "may or may not have been applied" in write.json()["detail"]
        assert received == ["POST /v1/interactions HTTP/1.1"]  # sent once
        received.clear()
        httpx.get(f"http://127.0.0.1:{port}/v1/similar/x", timeout=30)
        assert len(received) == 3 and set(received) == {"GET /v1/similar/x HTTP/1.1"}  # tried again (retries 2)
    finally:
        proxy.terminate()
        proxy.wait(10)
        listener.close()
