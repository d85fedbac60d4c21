"""`mmrecall serve --workers N --balancer haproxy`: N single-process API servers on loopback ports behind
HAProxy (Debian's `haproxy` package), which sends each request to the server with the fewest requests in
flight (`balance leastconn` in HTTP mode: per request, so a few long-lived keep-alive clients cannot pile
onto one process, which is what uvicorn's shared socket lets happen).

This module only writes HAProxy's configuration and keeps the processes running: a server that exits is
started again on its port (HAProxy's health check takes it out of rotation meanwhile and `retries` with
`redispatch` sends a request that found it gone to another one); HAProxy itself exiting stops everything
with an error, for the init system to restart. The same configuration, with other servers' addresses,
fronts API processes on several hosts (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmrecall.core.lifetime import die_with_parent
from mmrecall.pipeline.runner import free_port, wait_for_api

log = logging.getLogger(__name__)
BACKEND = "mmrecall_api"


class HAProxyMissing(RuntimeError):
    """No `haproxy` binary on PATH (apt-get install haproxy)."""


def _find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


def haproxy_available() -> bool:
    return _find_haproxy() is not None


def haproxy_binary() -> str:
    found = _find_haproxy()
    if found is None:
        raise HAProxyMissing("haproxy is not installed: `apt-get install haproxy`, or serve without --balancer")
    return found


def haproxy_config(host: str, port: int, servers: list[tuple[str, int]], stats_socket: Path) -> str:
    """The frontend on host:port, the servers (host, port) in one leastconn backend, a stats socket (per-server
    sessions: `echo "show stat" | socat - UNIX:<socket>`, or pipeline.balancer.server_stats)."""
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    option redispatch",  # a retried request may go to another server
        "    retries 2",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 120s",  # a large /v1/recall on a cold cache; training is never served here
        "    timeout http-keep-alive 60s",
        # a request waits this long for a free API process (one restarting leaves half the slots) instead of
        # the default 2 s, after which HAProxy answers 503 itself: then with a reason and Retry-After
        "    timeout queue 30s",
        "    http-error status 503 content-type application/json hdr Retry-After 5 "
        """string '{"detail":"no API process is free to answer (all busy or restarting): retry shortly"}'""",
        # a write whose process died before answering (a read is sent to another process instead, below)
        "    http-error status 502 content-type application/json "
        """string '{"detail":"the API process ended before it answered: the write may or may not have """
        """been applied"}'""",
        "frontend mmrecall",
        f"    bind {host}:{port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        "    balance leastconn",
        # a request in flight on a process that dies (killed, crashed) gets no answer from it: a read is sent
        # to another process; a write is not sent twice, since the dead process may have applied it
        "    retry-on conn-failure empty-response",
        "    http-request disable-l7-retry if !METH_GET !METH_HEAD !{ path_beg /v1/recall }",
        "    option httpchk GET /healthz",
        # at most 8 requests in flight per process, the rest queue here for whichever frees first: the API's
        # work is CPU-bound, so a queue in front of a busy process only waits longer
        "    default-server inter 1s fall 2 rise 1 maxconn 8",
    ]
    lines += [f"    server api{i} {address}:{number} check" for i, (address, number) in enumerate(servers)]
    return "\n".join(lines) + "\n"


def server_stats(stats_socket: Path) -> dict[str, dict[str, int]]:
    """Per server of the backend: current sessions (scur), total sessions (stot) and its status, from the
    stats socket's CSV."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = data.decode().splitlines()
    header = rows[0].lstrip("# ").split(",")
    out = {}
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=False))
        if values.get("pxname") == BACKEND and values.get("svname") not in ("FRONTEND", "BACKEND"):
            out[values["svname"]] = {
                "current": int(values["scur"] or 0),
                "total": int(values["stot"] or 0),
                "status": values["status"],
            }
    return out


def _api_server(port: int, access_log: bool, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--workers", "1"]
    return subprocess.Popen(command + ([] if access_log else ["--no-access-log"]), env=env, preexec_fn=die_with_parent)


def serve_behind_haproxy(workers: int, *, host: str, port: int, home: Path, access_log: bool) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or HAProxy exits (1); the servers inherit this process's environment
    (settings, the shared metrics directory)."""
    binary = haproxy_binary()
    env = dict(os.environ)
    ports = [free_port() for _ in range(workers)]
    servers = {p: _api_server(p, access_log, env) for p in ports}
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    proxy = None
    try:
        for p in ports:
            wait_for_api(f"http://127.0.0.1:{p}", timeout=300)
        config = home / "haproxy.cfg"
        config.write_text(haproxy_config(host, port, [("127.0.0.1", p) for p in ports], home / "haproxy.sock"))
        proxy = subprocess.Popen([binary, "-db", "-f", str(config)], preexec_fn=die_with_parent)
        log.info("HAProxy on %s:%d in front of %d API processes on ports %s", host, port, workers, ports)
        while not stopping:
            if proxy.poll() is not None:
                log.error("HAProxy exited with %s: stopping the API processes", proxy.returncode)
                return 1
            for p, server in list(servers.items()):
                if server.poll() is not None:
                    log.warning("the API process on port %d exited with %s: starting it again", p, server.returncode)
                    servers[p] = _api_server(p, access_log, env)
            time.sleep(0.5)
        return 0
    finally:
        for process in [*servers.values(), *([proxy] if proxy else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*servers.values(), *([proxy] if proxy else [])]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
