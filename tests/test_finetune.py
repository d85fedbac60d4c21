"""Training jobs on tiny configs and the demo catalogue: they run, learn, checkpoint and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrecall.cli.main import app
from mmrecall.core.demo_data import generate_demo
from mmrecall.encoders import create_encoder
from mmrecall.finetune.dual_stream import mask_tokens, pretrain_dual_stream
from mmrecall.finetune.tag_image import average_precision, train_tag_image
from mmrecall.storage.snapshots import USER_TOWER, SnapshotWriter


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), per_leaf=12, users=10)


def test_average_precision() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties count against


def test_tag_image_beats_the_prior_and_loads(demo: Path, tmp_path: Path) -> None:
    report = train_tag_image(
        demo, base="tiny-tag-image", tag_level=2, out_root=tmp_path, epochs=60, min_count=5, progress=False
    )
    assert report["tags"] == 12 and report["valid_map"] > report["prior_map"] + 0.2
    encoder = create_encoder(report["checkpoint"])
    assert encoder.dim == 32 and encoder.config.tag_head.tags[0] == "food/baking"
    level1 = train_tag_image(
        demo, base="tiny-tag-image", tag_level=1, out_root=tmp_path, epochs=5, min_count=5, progress=False
    )
    assert level1["tags"] == 6


def test_mask_tokens_keeps_specials_and_masks_each_title() -> None:
    import torch

    from mmrecall.encoders.text import load_tokenizer

    tokenizer = load_tokenizer()
    batch = tokenizer(["a short title", "another one here"], padding=True, return_tensors="pt")
    masked, labels = mask_tokens(
        batch["input_ids"], batch["attention_mask"], tokenizer, 0.15, torch.Generator().manual_seed(0)
    )
    assert ((labels != -100).sum(dim=1) >= 1).all()
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert (labels[special] == -100).all() and torch.equal(masked[special], batch["input_ids"][special])


def test_pretrain_dualstream_learns_checkpoints_and_resumes(demo: Path, tmp_path: Path) -> None:
    report = pretrain_dual_stream(
        demo, base="tiny-dual", out_root=tmp_path, steps=40, batch_size=24, lr=1e-3, checkpoint_every=20, progress=False
    )
    history = json.loads((Path(report["run"]) / "train_report.json").read_text())["history"]
    assert all(np.isfinite(row["loss"]) for row in history)
    first = np.mean([row["loss"] for row in history[:5]])
    last = np.mean([row["loss"] for row in history[-5:]])
    assert last < first, (first, last)
    assert {"mlm", "mfm", "align", "joint"} <= set(history[-1])
    resumed = pretrain_dual_stream(
        demo, base="tiny-dual", out_root=tmp_path, steps=45, batch_size=24, resume=Path(report["run"]), progress=False
    )
    assert resumed["steps"] == 45 and resumed["run"] == report["run"]
    encoder = create_encoder(resumed["checkpoint"])
    assert encoder.version != create_encoder("tiny-dual").version


def test_finetune_cli_runs_two_steps(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrecall.core.settings import get_settings

    monkeypatch.setenv("MMRECALL_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        args = [
            "finetune",
            "pretrain-dualstream",
            "--dataset",
            str(demo),
            "--base",
            "tiny-dual",
            "--steps",
            "2",
            "--batch-size",
            "8",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
        assert report["steps"] == 2 and Path(report["checkpoint"]).is_dir()
        bad = CliRunner().invoke(app, ["finetune", "tag-image", "--dataset", str(demo), "--base", "tiny-dual"])
        assert bad.exit_code == 2 and "tag-image variant" in bad.output
    finally:
        get_settings.cache_clear()


def test_finetune_g_writes_an_encoder_that_encodes_new_items(demo: Path, tmp_path: Path, monkeypatch) -> None:
    from mmrecall.core.settings import get_settings
    from mmrecall.encoders import ContentInput

    monkeypatch.setenv("MMRECALL_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        args = [
            "finetune",
            "g",
            "--dataset",
            str(demo),
            "--features",
            "tiny-test",
            "--epochs",
            "2",
            "--batch-size",
            "32",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
    finally:
        get_settings.cache_clear()
    encoder = create_encoder(report["checkpoint"])
    assert encoder.version.startswith("g@") and encoder.dim == 128
    vectors = encoder.encode([ContentInput("a brand-new pasta video", ["food/noodles"]), ContentInput("tennis final")])
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # an item G trained on gets its item bias; the same content under a new id is served by content alone
    seen = sorted(encoder.known_items)[0]
    assert len(encoder.known_items) > 10 and "brand-new" not in encoder.known_items
    old, new = encoder.encode(
        [ContentInput("x", ["food/baking"], item_id=seen), ContentInput("x", ["food/baking"], item_id="brand-new")]
    )
    assert not np.allclose(old, new, atol=1e-4)
    assert np.allclose(new, encoder.encode([ContentInput("x", ["food/baking"])])[0], atol=1e-6)
    # the workers' encode path passes the item id, so a trained item is served with its bias, as G scored it
    from mmrecall.pipeline.encode import encode_batch
    from mmrecall.storage.db import Item

    items = {i: Item(id=i, title="x", tags=["food/baking"]) for i in (seen, "brand-new")}
    ids, served, failed = encode_batch(encoder, items)
    assert ids == [seen, "brand-new"] and not failed
    assert np.allclose(served[0], old, atol=1e-6) and np.allclose(served[1], new, atol=1e-6)

    # a reindex with G active ships its user tower (in numpy) beside the index for personal recall
    from mmrecall.core.settings import Settings
    from mmrecall.index.ann import VectorIndex
    from mmrecall.pipeline.reindex import write_recall_tables
    from mmrecall.recall.towers import UserTowerNumpy

    vectors = encoder.encode([ContentInput(f"item {i}", ["food/baking"], item_id=str(i)) for i in range(20)])
    built = VectorIndex.build([str(i) for i in range(20)], vectors)
    writer = SnapshotWriter(tmp_path / "snapshots", "test")
    extras = write_recall_tables(Settings(home=tmp_path / "h"), built, report["checkpoint"], writer)
    assert extras["user_tower"] and extras["clusters"] >= 1
    user = UserTowerNumpy.load(writer.directory / USER_TOWER)(vectors[:5])
    assert user.shape == (128,) and np.isclose(np.linalg.norm(user), 1, atol=1e-5)


def test_finetune_g_with_the_sequence_tower_serves_active_interests(demo: Path, tmp_path: Path, monkeypatch) -> None:
    """`finetune g --user-tower seq`: the checkpoint records each user's active interests; a reindex
    exports the tower in numpy; the API side answers a user's active interests and searches with them."""
    from mmrecall.core.settings import Settings, get_settings
    from mmrecall.encoders import ContentInput, create_encoder
    from mmrecall.encoders.content_g import load_active_interests
    from mmrecall.index.ann import VectorIndex
    from mmrecall.pipeline.reindex import write_recall_tables
    from mmrecall.recall.towers import SeqTowerNumpy, load_user_tower

    monkeypatch.setenv("MMRECALL_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        args = [
            "finetune",
            "g",
            "--dataset",
            str(demo),
            "--features",
            "tiny-test",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--user-tower",
            "seq",
            "--interests",
            "3",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
        bad = CliRunner().invoke(app, ["finetune", "g", "--dataset", str(demo), "--user-tower", "rnn"])
        assert bad.exit_code == 2 and "--user-tower" in bad.output
    finally:
        get_settings.cache_clear()
    active = load_active_interests(report["checkpoint"])
    assert active and all(mask.shape == (3,) and mask.any() for mask in active.values())
    encoder = create_encoder(report["checkpoint"])
    vectors = encoder.encode([ContentInput(f"item {i}", ["food/baking"], item_id=str(i)) for i in range(20)])
    writer = SnapshotWriter(tmp_path / "snapshots", "test")
    extras = write_recall_tables(
        Settings(home=tmp_path / "h"),
        VectorIndex.build([str(i) for i in range(20)], vectors),
        report["checkpoint"],
        writer,
    )
    tower = load_user_tower(writer.directory / USER_TOWER)
    assert extras["user_tower"] and isinstance(tower, SeqTowerNumpy)
    user, mask = next(iter(active.items()))
    interests = tower(
        vectors[:5], None, gaps=np.array([0, 3, 3, 5, 1]), tag_pref=tower.tag_preferences([["food"]] * 5), user=user
    )
    assert interests.shape == (int(mask.sum()), 128) and np.allclose(np.linalg.norm(interests, axis=1), 1, atol=1e-5)
    assert tower(vectors[:5], None, user="never-seen").shape == (3, 128)  # no record: every interest serves
