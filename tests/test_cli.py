"""The CLI end to end: bulk ingest through a worker it starts, reindex, similar, status."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrecall.cli.main import app
from mmrecall.core.demo_data import generate_demo
from mmrecall.core.settings import get_settings
from mmrecall.pipeline.runner import settings_env
from tests.helpers import make_settings


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    settings = make_settings(tmp_path / "home", redis_url)
    for key, value in settings_env(settings).items():
        if key.startswith("MMRECALL_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_ingest_reindex_similar(cli_env, tmp_path: Path) -> None:
    dataset = generate_demo(tmp_path / "demo", per_leaf=3, users=5)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(dataset), "--start-worker"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["items"] == 36 and report["ready"] == 36 and report["failed"] == 0
    assert report["interactions_added"] == 100

    result = runner.invoke(app, ["reindex", "--local"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == 36

    result = runner.invoke(app, ["similar", "food-baking-000", "-k", "4"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert len(body["results"]) == 4 and "food-baking-000" not in [r["id"] for r in body["results"]]
    assert body["results"][0]["id"].startswith("food-")

    result = runner.invoke(app, ["recall", "--history", "food-baking-000,food-baking-001", "-k", "5"])
    assert result.exit_code == 0, result.output
    recalled = json.loads(result.output)["results"]
    assert len(recalled) == 5 and all(r["channels"] for r in recalled)
    bad = runner.invoke(app, ["recall"])
    assert bad.exit_code == 2 and "exactly one of user_id" in bad.output

    missing = runner.invoke(app, ["similar", "nope"])
    assert missing.exit_code == 2 and "unknown item id" in missing.output
    status = runner.invoke(app, ["status"])
    assert json.loads(status.output)["items"] == {"ready": 36}


def test_ingest_without_worker_says_so(cli_env, tmp_path: Path) -> None:
    dataset = generate_demo(tmp_path / "demo", per_leaf=1, users=1)
    result = CliRunner().invoke(app, ["ingest", str(dataset)])
    assert result.exit_code == 2 and "no worker answers" in result.output


def test_ingest_bad_dataset_is_a_clear_error(cli_env, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "items.jsonl").write_text('{"id": "a"}\n{not json\n')
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "items.jsonl:2" in result.output
