"""Helpers shared by the benchmarks: synthetic vectors, percentiles, memory, tables, JSON."""

from __future__ import annotations

import json
import platform
import resource
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np


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


def http_load(url: str, make_request: Callable, *, clients: int = 8, seconds: float = 10.0) -> dict:
    """Concurrent keep-alive clients for `seconds`: requests, errors, QPS, p50/p99 ms."""
    timings: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(slot: int) -> None:
        rng = np.random.default_rng(slot)
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = make_request(http, rng)
                timings[slot].append(time.perf_counter() - started)
                errors[slot] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [t for per in timings for t in per]
    return {"requests": len(flat), "errors": sum(errors), "qps": len(flat) / (time.perf_counter() - started),
            **percentiles_ms(flat)}  # fmt: skip
