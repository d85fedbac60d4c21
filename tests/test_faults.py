"""Faults injected for real: SIGKILLed workers, a broker restarted without its data, an API restarted
during a reindex, concurrent ingests of one id, and bad input through a real worker. Every item ends
`ready` or `failed` with a reason; nothing stored is lost. Run alone with `pytest -m faults`; the same
scenarios make `mmrecall bench faults`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrecall.benchmarks import faults

pytestmark = pytest.mark.faults


def test_worker_killed_mid_batch_loses_nothing_and_encodes_once(tmp_path: Path, redis_url: str) -> None:
    outcome = faults.worker_killed_mid_batch(tmp_path, redis_url)
    assert outcome.checks["encoding_seen"] > 0, outcome.checks  # the kill followed a batch in flight
    assert outcome.checks["ready_at_kill"] < outcome.enqueued
    assert outcome.lost == 0 and outcome.ready == outcome.enqueued
    assert outcome.checks["max_vector_rows_per_item"] == 1  # redelivery wrote nothing twice


def test_broker_restarted_without_its_data_is_reconciled(tmp_path: Path) -> None:
    outcome = faults.redis_restarted_mid_ingest(tmp_path)
    assert outcome.checks["ready_at_restart"] < outcome.enqueued  # queued tasks were really lost
    assert outcome.lost == 0 and outcome.ready == outcome.enqueued
    assert outcome.checks["max_vector_rows_per_item"] == 1


def test_api_restart_during_reindex_serves_whole_snapshots(tmp_path: Path, redis_url: str) -> None:
    outcome = faults.api_restarted_during_reindex(tmp_path, redis_url)
    checks = outcome.checks
    assert checks["job_state_at_kill"] == "running" and checks["job_state"] == "succeeded"
    assert checks["new_snapshot"] is not None  # the restarted API picked the new snapshot up
    assert set(checks["snapshots_served"]) <= {checks["first_snapshot"], checks["new_snapshot"]}
    # the window was really exercised: the restarted API answered while the reindex ran, with the whole
    # first snapshot, and every item query succeeded
    assert checks["window_requests"] > 0, checks
    assert checks["first_snapshot"] in checks["snapshots_served"]
    assert checks["similar_codes"] == [200]
    assert outcome.lost == 0


def test_worker_killed_during_reindex_keeps_the_old_snapshot(tmp_path: Path, redis_url: str) -> None:
    outcome = faults.worker_killed_during_reindex(tmp_path, redis_url)
    checks = outcome.checks
    assert checks["job_state_at_kill"] == "running"
    assert checks["current_after_kill"] == checks["first_snapshot"] == checks["served_after_kill"]
    assert checks["similar_after_kill"] == 200
    assert checks["job_state"] == "succeeded" and checks["job_runs"] == 2, checks  # sent again by reconcile
    assert checks["served_after_rerun"] and checks["served_after_rerun"] != checks["first_snapshot"]
    assert outcome.lost == 0


def test_concurrent_ingests_of_one_id_make_one_item(tmp_path: Path, redis_url: str) -> None:
    outcome = faults.concurrent_same_id(tmp_path, redis_url)
    assert outcome.checks["codes"] == [202] * 8
    assert outcome.checks["item_rows"] == 1 and outcome.checks["vector_rows"] == 1
    assert outcome.ready == 1 and outcome.lost == 0


def test_bad_media_fails_with_reasons_and_spares_stored_items(tmp_path: Path, redis_url: str) -> None:
    outcome = faults.bad_input_run(tmp_path, redis_url)
    assert outcome.checks["mismatched"] == {}
    assert outcome.failed == outcome.enqueued >= 6  # every accepted bad item ends failed, with its reason
    errors = outcome.checks["errors"]
    assert "too large" in errors["bad-cover-bomb.png"] and "truncated" in errors["bad-cover-truncated.png"]
    assert "empty" in errors["bad-video-empty.mp4"] and "not found" in errors["bad-cover-missing.png"]
    assert outcome.checks["good_items_damaged"] == [] and outcome.lost == 0
