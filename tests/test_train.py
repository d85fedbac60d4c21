"""Training from the catalogue: G learns from what the service holds, then serves (re-encode, reindex,
swap), through a real worker; a training that cannot run leaves the previous model serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmrecall.cli.main import app as cli
from mmrecall.core.demo_data import generate_demo
from mmrecall.core.interchange import read_interactions, read_items
from mmrecall.core.settings import get_settings
from mmrecall.pipeline.encode import content_of, load_encoder
from mmrecall.pipeline.ingest import bulk_ingest, ingest_interactions, ingest_items
from mmrecall.pipeline.runner import settings_env
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope
from mmrecall.storage.export import export_catalogue
from tests.helpers import Service, make_settings

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)


def test_train_from_the_catalogue_then_serve_it(service: Service) -> None:
    demo = generate_demo(service.settings.media_roots[0] / "train-demo", per_leaf=4, users=24)
    assert bulk_ingest(service.settings, demo)["failed"] == 0
    http = service.http
    bad = http.post("/v1/train", json={"features": ["/etc"]})
    assert bad.status_code == 400 and "unknown encoder" in bad.json()["detail"]
    job = http.post("/v1/train", json={"epochs": 2, "features": ["tiny-test"]}).json()
    assert job["state"] == "queued" and job["warning"] is None
    done = service.wait_job(job["job_id"], timeout=300)
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert result["interactions"] == sum(1 for _ in read_interactions(demo)) and "valid_hitrate@50" in result
    assert http.get("/v1/encoders").json()["active"] == result["checkpoint"]
    assert result["encoder_version"].startswith("g@")
    # the activation encoded the catalogue from the vectors the workers stored (G's inputs), and those give
    # what G's own encoding of the items gives
    assert result["encoded_from_stored_vectors"] == result["encoded"] == result["items"]
    encoder = load_encoder(service.settings, result["checkpoint"])
    with session_scope(service.settings.resolved_database_url) as session:
        ids = catalogue.ready_item_ids(session)[:8]
        items = catalogue.get_items(session, ids)
        stored = catalogue.vectors_of(session, ids, result["encoder_version"])
    full = encoder.encode([content_of(items[i], encoder, service.settings) for i in ids])
    np.testing.assert_allclose(np.stack([stored[i] for i in ids]), full, atol=1e-5)
    # the API follows the new snapshot: G's vectors, its user tower in the personal channel
    for _ in range(100):
        if http.get("/healthz").json()["snapshot"] == result["snapshot"]:
            break
        time.sleep(0.1)
    assert http.get("/healthz").json()["encoder_version"] == result["encoder_version"]
    recalled = http.post("/v1/recall", json={"user_id": "u000", "k": 10, "channels": ["personal"]}).json()
    assert len(recalled["results"]) == 10


def test_a_training_that_cannot_run_fails_and_keeps_the_model(tmp_path: Path, redis_url: str, monkeypatch) -> None:
    settings = make_settings(tmp_path / "home", redis_url)
    for name, value in settings_env(settings).items():
        if name.startswith("MMRECALL_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["train", "--local", "--epochs", "1"])
        assert result.exit_code == 2 and "no interactions" in result.output
        jobs = CliRunner().invoke(cli, ["status"])
        assert json.loads(jobs.output)["snapshot"] is None  # nothing was swapped in
    finally:
        get_settings.cache_clear()


def test_export_round_trips_the_catalogue(service: Service, tmp_path: Path) -> None:
    demo = generate_demo(service.settings.media_roots[0] / "export-demo", per_leaf=2, users=5)
    bulk_ingest(service.settings, demo)
    exported = export_catalogue(service.settings.resolved_database_url, tmp_path / "out")
    items = {i.id: i for i in read_items(tmp_path / "out")}
    source = {i.id: i for i in read_items(demo)}
    assert set(source) <= set(items) and exported["items"] == len(items)
    assert all(items[i].model_dump() == source[i].model_dump() for i in source)
    rows = {(r.user_id, r.item_id, r.timestamp) for r in read_interactions(tmp_path / "out")}
    assert {(r.user_id, r.item_id, r.timestamp) for r in read_interactions(demo)} <= rows

    # ingested elsewhere (a catalogue of its own) and exported again: the same items, tags, media paths,
    # interactions, events and weights
    elsewhere = make_settings(tmp_path / "elsewhere", service.settings.redis_url)
    elsewhere.ensure_dirs()
    ingest_items(elsewhere, list(read_items(tmp_path / "out")), enqueue=False)
    ingest_interactions(elsewhere, read_interactions(tmp_path / "out"))
    again = export_catalogue(elsewhere.resolved_database_url, tmp_path / "again", statuses=("pending",))
    assert again == exported
    assert [i.model_dump() for i in read_items(tmp_path / "again")] == [i.model_dump() for i in items.values()]
    assert list(read_interactions(tmp_path / "again")) == list(read_interactions(tmp_path / "out"))


def test_the_schedule_retrains_and_serves(tmp_path: Path, redis_url: str) -> None:
    """MMRECALL_TRAIN_EVERY_S with a worker started with --beat: a train job runs on its own and swaps in G."""
    from mmrecall.pipeline.runner import start_worker, wait_for_workers
    from mmrecall.storage import snapshots

    settings = make_settings(tmp_path / "home", redis_url, train_every_s=2.0)
    demo = generate_demo(settings.media_roots[0] / "demo", per_leaf=3, users=12)
    assert bulk_ingest(settings, demo, ensure_worker=True)["failed"] == 0
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=str(settings.home / "beat.log"), beat=True)
    try:
        wait_for_workers(settings, timeout=90)
        deadline = time.time() + 240
        trained = None
        while time.time() < deadline and trained is None:
            with session_scope(settings.resolved_database_url) as session:
                jobs = [j for j in catalogue.recent_jobs(session) if j.kind == "train"]
                trained = next((j.result for j in jobs if j.state == "succeeded"), None)
                assert all(j.state != "failed" for j in jobs), [j.error for j in jobs]
            time.sleep(0.5)
        assert trained is not None and trained["encoder_version"].startswith("g@")
        current = snapshots.current_snapshot(settings.snapshots_dir)
        assert snapshots.read_meta(current)["encoder_version"].startswith("g@")  # (a later run may have swapped)
    finally:
        worker.terminate()
        worker.wait(60)


def test_the_train_job_can_train_the_feature_encoders_first(tmp_path: Path, redis_url: str) -> None:
    """`mmrecall train --pretrain tag-image,dual-stream`: both encoders train on the catalogue's export, G
    reads their vectors beside its base features and is served; a retraining replaces them, never stacks."""
    from mmrecall.encoders.content_g import CONFIG_FILE, GConfig
    from mmrecall.pipeline.encode import encode_items, encoder_specs
    from mmrecall.pipeline.ingest import ingest_interactions, ingest_items
    from mmrecall.pipeline.training import train_from_catalogue
    from mmrecall.recall.serving import ServingIndex

    settings = make_settings(tmp_path / "home", redis_url, encoder="tiny-test")
    settings.ensure_dirs()
    demo = generate_demo(settings.media_roots[0] / "demo", per_leaf=4, users=12)
    ids = ingest_items(settings, list(read_items(demo)), enqueue=False)
    encode_items(settings, ids)
    ingest_interactions(settings, list(read_interactions(demo)))
    params = {
        "epochs": 1,
        "pretrain": ["tag-image", "dual-stream"],
        "pretrain_params": {
            "tag-image": {"base": "tiny-tag-image", "epochs": 2, "min_count": 2},
            "dual-stream": {"base": "tiny-dual", "steps": 2, "batch_size": 8},
        },
    }
    features = []
    for _ in range(2):
        with session_scope(settings.resolved_database_url) as session:
            job_id = catalogue.create_job(session, "train", params).id
        result = train_from_catalogue(settings, job_id, params)
        pretrained = result["pretrained"]
        assert result["features"] == ["tiny-test", pretrained["tag-image"], pretrained["dual-stream"]]
        assert encoder_specs(settings)[0] == result["checkpoint"]  # served
        config = GConfig.from_json((Path(result["checkpoint"]) / CONFIG_FILE).read_text())
        assert list(config.feature_encoders) == result["features"]
        features.append(result["features"])
    assert features[0][1:] != features[1][1:]  # the second run's own encoders, in place of the first's
    serving = ServingIndex(settings)
    serving.refresh()
    assert serving.state is not None and serving.state.version == result["encoder_version"]
    assert serving.state.user_tower is not None  # G's tower answers the personal channel
    bad = {**params, "pretrain": ["word2vec"]}
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "train", bad).id
    with pytest.raises(ValueError, match="unknown feature encoder to pretrain 'word2vec'"):
        train_from_catalogue(settings, job_id, bad)
    assert encoder_specs(settings)[0] == result["checkpoint"]  # the failed run changed nothing served


def test_the_train_job_trains_both_user_towers_and_serves_the_better(tmp_path: Path, redis_url: str) -> None:
    """`mmrecall train --user-tower both`: one G per user tower on the same export; the one with the higher
    held-out hitRate@50 is activated and served, both figures are on the job's result."""
    from mmrecall.encoders.content_g import CONFIG_FILE, GConfig
    from mmrecall.pipeline.encode import encode_items, encoder_specs
    from mmrecall.pipeline.training import train_from_catalogue
    from mmrecall.recall.serving import ServingIndex
    from mmrecall.recall.towers import SeqTowerNumpy

    settings = make_settings(tmp_path / "home", redis_url, encoder="tiny-test")
    settings.ensure_dirs()
    demo = generate_demo(settings.media_roots[0] / "demo", per_leaf=4, users=12)
    encode_items(settings, ingest_items(settings, list(read_items(demo)), enqueue=False))
    ingest_interactions(settings, list(read_interactions(demo)))
    params = {"epochs": 2, "user_tower": "both"}
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "train", params).id
    result = train_from_catalogue(settings, job_id, params)
    towers = result["user_towers"]
    assert set(towers) == {"pool", "seq"} and towers["pool"]["checkpoint"] != towers["seq"]["checkpoint"]
    better = max(towers, key=lambda t: towers[t]["valid_hitrate@50"])
    assert result["user_tower"] == better and result["checkpoint"] == towers[better]["checkpoint"]
    assert result["valid_hitrate@50"] == towers[better]["valid_hitrate@50"]
    assert encoder_specs(settings)[0] == result["checkpoint"]  # served
    config = GConfig.from_json((Path(result["checkpoint"]) / CONFIG_FILE).read_text())
    assert config.user_tower == better
    serving = ServingIndex(settings)
    serving.refresh()
    assert serving.state is not None
    assert isinstance(serving.state.user_tower, SeqTowerNumpy) == (better == "seq")


def test_a_training_whose_worker_is_killed_goes_on_from_its_last_epoch(tmp_path: Path, redis_url: str) -> None:
    """The worker running a train job is SIGKILLed mid-training: its job's process goes with it, reconcile
    finds the job without a heartbeat and sends it again, and the next worker's run goes on from the last
    whole epoch with the catalogue export of the first run, then activates the model."""
    from mmrecall.benchmarks.faults import kill
    from mmrecall.pipeline.queue import submit_job
    from mmrecall.pipeline.runner import start_worker, wait_for_workers

    settings = make_settings(tmp_path / "home", redis_url, job_stale_after_s=3.0, reconcile_every_s=1.0, job_attempts=3)
    log = str(settings.home / "worker.log")
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=log)
    try:
        wait_for_workers(settings, timeout=90)
        demo = generate_demo(settings.media_roots[0] / "demo", per_leaf=4, users=60)
        assert bulk_ingest(settings, demo)["failed"] == 0
        params = {"epochs": 12, "patience": 12, "features": ["tiny-test"]}
        job_id = submit_job(settings, "train", params)
        deadline, epoch = time.time() + 240, 0
        while epoch < 2 and time.time() < deadline:
            saved = list((settings.home / "train").glob(f"*/{job_id[:8]}/g-default.resume.pt"))
            if saved:
                try:
                    epoch = int(torch.load(saved[0], weights_only=False)["epoch"])
                except (OSError, RuntimeError, EOFError):  # replaced while read: the next look reads it
                    pass
            time.sleep(0.05)
        assert epoch >= 2, "the training never got to its second epoch"
        kill(worker)
        with session_scope(settings.resolved_database_url) as session:
            assert catalogue.get_job(session, job_id).state == "running"
        exported = (settings.home / "train").glob(f"*/{job_id[:8]}/export.done.json")
        assert len(list(exported)) == 1
        worker = start_worker(settings, concurrency=1, pool="solo", log_path=log)
        deadline = time.time() + 300
        while time.time() < deadline:
            with session_scope(settings.resolved_database_url) as session:
                job = catalogue.get_job(session, job_id)
                state, result, error, attempt = job.state, job.result, job.error, job.params.get("attempt")
            if state in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        assert state == "succeeded", error
        assert attempt == 2
        assert result["resumed_after_epoch"] >= epoch  # not from the start
        assert result["best_epoch"] >= 1 and result["encoder_version"].startswith("g@")
        assert len(list((settings.home / "train").glob(f"*/{job_id[:8]}"))) == 1  # one working folder
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(60)
