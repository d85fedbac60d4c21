"""Benchmarks run by `mmrecall bench NAME --out DIR`: each prints a table and writes DIR/NAME.json."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

NAMES = (
    "encode",
    "index",
    "api",
    "perf",
    "faults",
    "scaling",
    "answers",
    "served",
    "homophily",
    "store",
    "train",
    "soak",
)


def get_benchmark(name: str) -> Callable[..., dict]:
    if name not in NAMES:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")
    return import_module(f"mmrecall.benchmarks.{name}").run
