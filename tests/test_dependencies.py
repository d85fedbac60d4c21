"""A broker or worker that is not there is said at once: /readyz names it, writes answer 503 with the
reason within seconds, jobs fail fast with the message ingest gives, and nothing stored is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmrecall.benchmarks.faults import worker
from mmrecall.cli.main import app as cli
from mmrecall.core.settings import get_settings
from mmrecall.pipeline.runner import PrivateRedis, free_port, settings_env
from tests.helpers import ApiServer, make_settings


def test_broker_down_answers_503_fast_and_the_item_is_encoded_once_it_is_back(tmp_path: Path) -> None:
    broker = PrivateRedis()  # not started: its port refuses connections
    settings = make_settings(tmp_path / "home", broker.url, reconcile_after_s=1.0, reconcile_every_s=0.5)
    cover = settings.media_roots[0] / "c.png"

    Image.new("RGB", (32, 32), (200, 40, 40)).save(cover)
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()["problems"]) == {"broker", "snapshot"}
        assert http.get("/healthz").status_code == 200  # reads still serve

        started = time.perf_counter()
        answer = http.post("/v1/items", json={"items": [{"id": "a", "title": "red square", "cover": str(cover)}]})
        seconds = time.perf_counter() - started
        assert answer.status_code == 503 and seconds < 5, (answer.status_code, seconds)
        assert "does not answer" in answer.json()["detail"] and "pending" in answer.json()["detail"]
        assert answer.headers["retry-after"] == "5"
        assert http.get("/v1/items/a").json()["status"] == "pending"  # committed, nothing lost

        reindex = http.post("/v1/reindex")
        assert reindex.status_code == 503 and "broker" in reindex.json()["detail"]

        broker.start()  # the broker is back: a worker's reconcile sweep sends the pending item again
        try:
            assert set(http.get("/readyz").json()["problems"]) == {"snapshot"}  # the broker answers again
            with worker(settings):
                deadline = time.time() + 60
                while http.get("/v1/items/a").json()["status"] != "ready" and time.time() < deadline:
                    time.sleep(0.2)
                assert http.get("/v1/items/a").json()["status"] == "ready"
        finally:
            broker.kill()


def test_jobs_without_a_worker_fail_at_once_with_what_to_do(tmp_path: Path, redis_url: str, monkeypatch) -> None:
    """reindex and activate with nobody consuming the queue: one line naming `mmrecall worker` and --local,
    within seconds; --local runs the same job here."""
    settings = make_settings(tmp_path / "home", redis_url)
    for name, value in settings_env(settings).items():
        if name.startswith("MMRECALL_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    other = make_settings(tmp_path / "other", redis_url)  # another instance's worker answers on the same broker
    try:
        with worker(other):
            for args in (["reindex"], ["activate", "text-minilm"]):
                started = time.perf_counter()
                result = CliRunner().invoke(cli, args)
                assert result.exit_code == 2 and time.perf_counter() - started < 10, result.output
                assert "no worker answers" in result.output and "mmrecall worker" in result.output
                assert "--local" in result.output and "Traceback" not in result.output
        local = CliRunner().invoke(cli, ["reindex", "--local"])  # nothing stored yet: a clear refusal
        assert local.exit_code == 2 and "no vectors stored" in local.output
    finally:
        get_settings.cache_clear()


def test_cli_with_the_broker_down_prints_one_line_and_debug_the_traceback(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(tmp_path / "home", closed)
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "items.jsonl").write_text('{"id": "a", "title": "x"}\n')
    env = settings_env(settings)
    command = [sys.executable, "-m", "mmrecall.cli"]
    quiet = subprocess.run([*command, "ingest", str(dataset)], env=env, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 2 and "does not answer" in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1 and "Traceback" not in quiet.stderr
    loud = subprocess.run(
        [*command, "--debug", "ingest", str(dataset)], env=env, capture_output=True, text=True, timeout=60
    )
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "BrokerUnavailable" in loud.stderr


def test_demo_on_a_machine_without_redis_runs_a_private_broker(tmp_path: Path) -> None:
    """`mmrecall demo --no-serve` where nothing answers at the default broker URL (a network namespace of
    its own, with only loopback): it says it runs a private Redis, finishes, and stops it at exit."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRECALL_")}
    env["MMRECALL_HOME"] = str(tmp_path / "home")
    script = f"ip link set lo up && exec {sys.executable} -m mmrecall.cli demo --no-serve"
    demo = subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "no Redis answers at redis://127.0.0.1:6379/0: running a private one" in demo.stdout
    assert "similar to food-baking-000" in demo.stdout and "reindexed 300 vectors" in demo.stdout
    # it trains G from the ingested interactions and prints one user's recall with provenance
    assert "trained G in" in demo.stdout and "personalised recall for u000" in demo.stdout
    listed = demo.stdout.split("personalised recall for u000")[1].splitlines()[1:11]
    assert len(listed) == 10 and sum("personal" in line for line in listed) >= 3, listed


def test_waiting_on_items_no_worker_encodes_fails_instead_of_hanging(tmp_path: Path, redis_url: str) -> None:
    from mmrecall.core.interchange import ItemRecord
    from mmrecall.pipeline.queue import NoWorker
    from mmrecall.pipeline.runner import wait_for_items
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    settings = make_settings(tmp_path / "home", redis_url)
    with session_scope(settings.resolved_database_url) as session:
        catalogue.upsert_items(session, [ItemRecord(id="a", title="a"), ItemRecord(id="b", title="b")])
    started = time.perf_counter()
    with pytest.raises(NoWorker, match="2 items wait for encoding: no worker answers"):
        wait_for_items(settings, ["a", "b"], progress=False, poll_s=0.1, stall_s=1.0)
    assert time.perf_counter() - started < 10
