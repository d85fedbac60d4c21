"""`mmrecall bench soak` in small: three minutes of mixed load on 1,000 items with every fault of the full
run (workers SIGKILLed, Redis restarted empty, an API process killed, PostgreSQL stopped for 60 s, a train
and two reindexes). Slow (about seven minutes): `pytest -m slow tests/test_soak.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrecall.benchmarks import soak
from mmrecall.pipeline.runner import postgres_bin_dir

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.mark.skipif(postgres_bin_dir() is None, reason="the PostgreSQL server programs are not installed")
def test_a_short_soak_loses_nothing_and_errs_only_inside_its_fault_windows(tmp_path: Path) -> None:
    result = soak.run(tmp_path / "out", scale="1k", minutes=3.0)
    names = {fault["name"] for fault in result["faults"]}
    assert {"worker_kill", "redis_restart", "api_kill", "postgres_stop"} <= names
    assert result["items"]["lost"] == 0 and result["items"]["enqueued"] > 0
    assert result["interactions"]["lost"] == 0 and result["interactions"]["acknowledged"] > 0
    assert result["errors_5xx_outside_windows"] == 0, result["errors_outside_examples"]
    assert result["errors_without_reason"] == 0 and result["error_503_without_retry_after"] == 0
    assert result["snapshots"]["broken"] == [] and result["models"]["partial"] == []
    assert result["degraded_reads"] > 0  # stored users were served during the database outage
    assert all(row["as_expected"] > 0 for row in result["bad_inputs"]), result["bad_inputs"]
    assert (tmp_path / "out" / "soak.png").stat().st_size > 10_000
