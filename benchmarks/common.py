"""Helpers shared by the benchmarks: synthetic vectors, percentiles, memory, tables, JSON."""

from __future__ import annotations

import http.client
import json
import json as _json
import platform
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

from mmrecall.core.provenance import provenance


def low_rank_vectors(n: int, d: int = 256, rank: int = 24, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors with a low intrinsic dimension plus a little noise, like real embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = rng.normal(size=(m, rank)).astype(np.float32) @ basis
        block += (
            0.15
            * np.linalg.norm(block, axis=1, keepdims=True)
            / np.sqrt(d)
            * rng.normal(size=(m, d)).astype(np.float32)
        )
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


def table(rows: list[dict], columns: Sequence[str]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_result(out_dir: Path, name: str, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        **provenance(),
        "benchmark": name,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpus()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


class LoadClient:
    """A keep-alive HTTP/1.1 client on http.client: far less client CPU per request than httpx, which
    matters when the clients share the server's two cores."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def request(self, method: str, path: str, *, params: dict | None = None, json: dict | None = None) -> LoadReply:
        body = _json.dumps(json).encode() if json is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, f"{path}?{urlencode(params)}" if params else path, body=body, headers=headers)
        response = self.conn.getresponse()
        return LoadReply(response.status, response.read())

    def get(self, path: str, params: dict | None = None) -> LoadReply:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: dict) -> LoadReply:
        return self.request("POST", path, json=json)

    def close(self) -> None:
        self.conn.close()


@dataclass
class LoadReply:
    status_code: int
    content: bytes


def http_load(url: str, make_request: Callable, *, clients: int = 8, seconds: float = 10.0) -> dict:
    """Concurrent keep-alive clients (closed loop) for `seconds`: requests, errors, QPS, p50/p99 ms.

    make_request(client: LoadClient, rng) -> LoadReply."""
    timings: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(slot: int) -> None:
        rng = np.random.default_rng(slot)
        http = LoadClient(url)
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = make_request(http, rng)
                timings[slot].append(time.perf_counter() - started)
                errors[slot] += response.status_code != 200
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [t for per in timings for t in per]
    return {
        "requests": len(flat),
        "errors": sum(errors),
        "qps": len(flat) / (time.perf_counter() - started),
        **percentiles_ms(flat),
        "load_generator": "python",
    }


# wrk (C, an event loop per thread) costs a fraction of the Python client's CPU per request, which matters
# when the load generator shares the server's cores: with the Python client, its own GIL hand-offs and
# parsing land in the measured latency. The Lua script builds each request and prints the summary as JSON.
WRK_SUMMARY = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nWRK-JSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, '
    .. '"p99_us": %d, "max_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_load(url: str, request_lua: str, *, clients: int = 8, seconds: float = 10.0) -> dict:
    """Closed-loop keep-alive load from wrk (one thread, `clients` connections): the same keys as http_load.

    request_lua: the body of a Lua `request = function() ... end` (it returns wrk.format(...))."""
    script = f"math.randomseed(7)\nrequest = function()\n{request_lua}\nend\n{WRK_SUMMARY}"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        done = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", handle.name, url],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        Path(handle.name).unlink()
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK-JSON "))
    measured = _json.loads(line.removeprefix("WRK-JSON "))
    return {
        "requests": measured["requests"],
        "errors": measured["errors"],
        "qps": measured["requests"] / (measured["duration_us"] / 1e6),
        "p50_ms": measured["p50_us"] / 1000.0,
        "p99_ms": measured["p99_us"] / 1000.0,
        "max_ms": measured["max_us"] / 1000.0,
        "load_generator": "wrk",
    }
