"""The harness: protocols, metrics with pessimistic ties, baselines, and the reference figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrecall.cli.main import app
from mmrecall.core.dataset import cold_items_split, leave_last_out, load_dataset
from mmrecall.core.demo_data import generate_demo
from mmrecall.core.interchange import InteractionRecord, ItemRecord, write_interactions, write_items
from mmrecall.evaluation.channels import EvalContext, ItemCFChannel, MFChannel, PopularChannel
from mmrecall.evaluation.harness import evaluate_channel
from mmrecall.evaluation.metrics import MetricAccumulator, target_ranks
from tests.helpers import shared_dataset


def test_ties_count_against_the_target() -> None:
    scores = np.array([0.5, 0.9, 0.5, -np.inf, 0.1], np.float32)
    assert target_ranks(scores, np.array([1]))[0] == 0
    assert target_ranks(scores, np.array([0]))[0] == 2  # item 2 ties with it and counts above
    assert target_ranks(scores, np.array([3]))[0] == 5  # excluded target: a miss everywhere


def test_metrics_for_one_query() -> None:
    tags = [frozenset({"a"}), frozenset({"b"}), frozenset({"a", "c"})]
    acc = MetricAccumulator(3, tags, reference=np.eye(3, dtype=np.float32))
    acc.add(np.array([0.2, 0.1, 0.9], np.float32), np.array([0]))  # target second
    summary = acc.summary()
    assert summary["hitrate@10"] == 1.0 and summary["ndcg@50"] == pytest.approx(1 / np.log2(3))
    assert summary["coverage"] == 1.0 and summary["diversity"] == 3 and summary["ild@50"] == pytest.approx(1.0)


def _toy(tmp_path: Path) -> Path:
    items = [ItemRecord(id=f"i{n}", title=f"item {n}") for n in range(6)]
    rows = [  # user a: i0, i1, then i2 and i3 at the same time (file order breaks the tie)
        InteractionRecord(user_id="a", item_id="i0", timestamp=1),
        InteractionRecord(user_id="a", item_id="i1", timestamp=2),
        InteractionRecord(user_id="a", item_id="i3", timestamp=3),
        InteractionRecord(user_id="a", item_id="i2", timestamp=3),
        InteractionRecord(user_id="b", item_id="i1", timestamp=1),
        InteractionRecord(user_id="b", item_id="i2", timestamp=5),
        InteractionRecord(user_id="b", item_id="i0", timestamp=2),
        InteractionRecord(user_id="c", item_id="i5", timestamp=1),  # too short: no query
    ]
    write_items(tmp_path, items)
    write_interactions(tmp_path, rows)
    return tmp_path


def test_leave_last_out_split(tmp_path: Path) -> None:
    data = load_dataset(_toy(tmp_path))
    test = leave_last_out(data, "test")
    by_user = {
        data.user_ids[u]: (h.tolist(), t.tolist())
        for u, h, t in zip(test.query_users, test.histories, test.targets, strict=True)
    }
    ix = data.item_index
    assert by_user["a"] == ([ix["i0"], ix["i1"], ix["i3"]], [ix["i2"]])  # tie at t=3 broken by file order
    assert by_user["b"] == ([ix["i1"], ix["i0"]], [ix["i2"]])
    assert "c" not in by_user
    assert ix["i2"] not in test.train_items[test.train_users == data.user_ids.index("a")]
    valid = leave_last_out(data, "valid")
    assert {data.user_ids[u]: t.tolist() for u, t in zip(valid.query_users, valid.targets, strict=True)} == {
        "a": [ix["i3"]],
        "b": [ix["i0"]],
    }
    assert len(valid.train_items) == len(test.train_items) - 2


def test_cold_split_removes_cold_items_from_training(tmp_path: Path) -> None:
    data = load_dataset(generate_demo(tmp_path / "demo", per_leaf=5, users=20))
    split = cold_items_split(data, fraction=0.2, seed=1)
    cold = set(split.cold_items.tolist())
    assert len(cold) == 12
    assert not cold & set(split.train_items.tolist())
    assert all(
        set(t.tolist()) <= cold and not set(h.tolist()) & cold
        for h, t in zip(split.histories, split.targets, strict=True)
    )
    assert np.array_equal(split.candidates, split.cold_items)


def test_itemcf_matches_brute_force(tmp_path: Path) -> None:
    data = load_dataset(generate_demo(tmp_path / "demo", per_leaf=4, users=15))
    split = leave_last_out(data, "test")
    channel = ItemCFChannel()
    channel.fit(EvalContext(data), split)
    users = {}
    for u, i in zip(split.train_users, split.train_items, strict=True):
        users.setdefault(int(i), set()).add(int(u))
    history = split.histories[0]
    recent = list(dict.fromkeys(history[::-1].tolist()))[:20]
    expected = np.zeros(data.n_items)
    for j in range(data.n_items):
        for h in recent:
            if users.get(h) and users.get(j):
                expected[j] += len(users[h] & users[j]) / np.sqrt(len(users[h]) * len(users[j]))
    got = channel.scores(split.query_users[:1], split.histories[:1])[0]
    assert np.allclose(got, expected, atol=1e-5)


def test_reference_figures_on_ml_latest_small(tmp_path: Path) -> None:
    """Popularity and itemCF on the shared MovieLens set reproduce their independently measured figures (±0.01);
    MF (implicit's ALS, at the setting the valid split chose) reproduces the harness's measured figure."""
    raw = shared_dataset("movielens-small-posters", "ml-latest-small")
    from mmrecall.core.movielens import import_movielens

    import_movielens(raw, tmp_path / "ml")
    data = load_dataset(tmp_path / "ml")
    split = leave_last_out(data, "test")
    ctx = EvalContext(data)
    results = {}
    for channel in (PopularChannel(), ItemCFChannel(), MFChannel(factors=128, regularization=0.01, alpha=1.0)):
        channel.fit(ctx, split)
        results[channel.name] = evaluate_channel(channel, split, ctx, reference=None, exclude_history=True)
    assert results["popular"]["hitrate@50"] == pytest.approx(0.110, abs=0.01)
    assert results["popular"]["hitrate@10"] == pytest.approx(0.041, abs=0.01)
    assert results["itemcf"]["hitrate@50"] == pytest.approx(0.213, abs=0.01)
    assert results["itemcf"]["hitrate@10"] == pytest.approx(0.062, abs=0.01)
    assert results["mf"]["hitrate@50"] == pytest.approx(0.231, abs=0.015)  # above popular and itemCF


def test_eval_cli_writes_report_table_and_plot(tmp_path: Path) -> None:
    dataset = generate_demo(tmp_path / "demo", per_leaf=6, users=30)
    out, plot = tmp_path / "report.json", tmp_path / "report.png"
    args = [
        "eval",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--plot",
        str(plot),
        "--cache",
        str(tmp_path / "c"),
        "--encoder",
        "tiny-test",
        "--channels",
        "v2v",
        "--baselines",
        "random,popular,itemcf,sasrec,text_v2v",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["channels"]) == {"random", "popular", "itemcf", "sasrec", "text_v2v", "v2v"}
    assert set(report["cold"]) == set(report["channels"])
    for row in [*report["channels"].values(), *report["cold"].values()]:
        assert {
            "hitrate@10",
            "hitrate@30",
            "hitrate@50",
            "hitrate@100",
            "recall@50",
            "ndcg@50",
            "coverage",
            "diversity",
        } <= set(row)
    # the demo's users like two categories: content recall must beat random on cold items
    assert report["cold"]["text_v2v"]["hitrate@10"] > report["cold"]["random"]["hitrate@10"]
    assert "| itemcf |" in result.output and plot.stat().st_size > 10_000
    assert list((tmp_path / "c").glob("vectors-*.npy"))  # encodings cached for the next run
    bad = CliRunner().invoke(app, ["eval", "--dataset", str(dataset), "--channels", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown channels" in bad.output
    bad = CliRunner().invoke(app, [*args[:9], "--baselines", "sasrec", "--sasrec-train", '{"patient": 3}'])
    assert bad.exit_code == 2 and "unknown settings ['patient']" in bad.output and "patience" in bad.output
    # --channels alone runs exactly those (no baseline, no SASRec training); every row has its wall time
    only = [*args[:9], "--channels", "itemcf,v2v", "--protocol", "last", "--quick"]
    assert CliRunner().invoke(app, only).exit_code == 0
    report = json.loads(out.read_text())
    assert set(report["channels"]) == {"itemcf", "v2v"} and set(report["training"]) == {"channels/v2v"}  # G, no SASRec
    assert set(report["seconds"]) == {"channels/itemcf", "channels/v2v"} and report["users"] == 30


def test_recall_set_channels_in_the_harness(tmp_path: Path) -> None:
    """The served channels and the merge, end to end through the harness (tiny settings): each split's
    serving state is built by the train job, its recall set tuned at reindex."""
    from mmrecall.evaluation.harness import run_eval

    dataset = generate_demo(tmp_path / "demo", per_leaf=6, users=30)
    channels = ["v2v", "personal", "cluster", "multi_interest", "merged"]
    report = run_eval(
        dataset,
        channels=channels,
        baselines=["random"],
        encoder="tiny-test",
        cache=tmp_path / "c",
        progress=False,
        g_train={"epochs": 2, "batch_size": 64},
        workdir=tmp_path / "homes",
    )
    for key in ("channels", "cold"):
        assert set(channels) <= set(report[key])
        merged, cluster = report[key]["merged"], report[key]["cluster"]
        assert 0 <= merged["hitrate@50"] <= 1 and merged["coverage"] > 0
        # the cluster channel recalls only cluster-mates of the triggers: fewer categories than the merge
        assert cluster["diversity"] <= merged["diversity"]
    assert report["cold"]["personal"]["hitrate@10"] > report["cold"]["random"]["hitrate@10"]
    assert "channels/personal" in report["training"]
    tuned = report["params"]["channels/merged"]  # tuned at reindex on G's held-out interactions
    assert {"decay", "merge", "held_out"} <= set(tuned) and {"alpha", "beta", "trust"} <= set(tuned["merge"])
    assert {p.name for p in (tmp_path / "homes").iterdir()} == {"last-test-pool", "cold-test-pool"}


def test_multi_interest_seq_fills_its_quotas_with_items_the_split_ranks(tmp_path: Path) -> None:
    """Under the cold protocol only cold items are ranked: the interests' quotas must go to them, not to
    warm items that are dropped afterwards."""
    from mmrecall.core.dataset import cold_items_split, load_dataset
    from mmrecall.evaluation.channels import EvalContext, MultiInterestSeqChannel

    data = load_dataset(generate_demo(tmp_path / "demo", per_leaf=6, users=30))
    ctx = EvalContext(
        data,
        cache=tmp_path / "c",
        encoder="tiny-test",
        g_features=("tiny-test",),
        progress=False,
        g_train={"epochs": 1, "batch_size": 64, "random_negatives": 32},
    )
    split = cold_items_split(data)
    channel = MultiInterestSeqChannel()
    channel.fit(ctx, split)
    scores = channel.scores(split.query_users[:4], split.histories[:4], split.history_times[:4], n=5)
    listed = np.isfinite(scores)
    cold = np.zeros(data.n_items, bool)
    cold[split.candidates] = True
    assert listed.any(axis=1).all() and not (listed & ~cold).any()


def test_sasrec_learns_sequential_structure() -> None:
    """Users walk a ring of items (each item is followed by the next): SASRec must learn the next step,
    which no popularity or co-occurrence count can tell from its reverse."""
    from mmrecall.finetune.sasrec import SASRecConfig, SASRecTrainer

    rng = np.random.default_rng(0)
    n_items = 400
    sequences = [(rng.integers(n_items) + np.arange(rng.integers(8, 20))) % n_items for _ in range(400)]
    trainer = SASRecTrainer(
        n_items, SASRecConfig(dim=32, max_len=20, epochs=20, eval_every=5, batch_size=64, lr=3e-3, dropout=0.1)
    )
    report = trainer.fit(sequences)
    queries = [np.arange(3, 8), np.arange(140, 146)]
    scores = trainer.scores(queries)
    for row, query in enumerate(queries):
        scores[row, query] = float("-inf")  # recall leaves out what the user has seen
    top = scores.topk(3, dim=1).indices.numpy()
    assert 8 in top[0] and 146 in top[1], top
    assert report["valid_hitrate@50"] > 0.9 and report["best_epoch"] > 0
    assert report["retrained_epochs"] == report["best_epoch"]  # then trained afresh on everything


def test_cli_baselines_match_the_harness() -> None:
    from mmrecall.cli.main import EVAL_BASELINES
    from mmrecall.evaluation.registry import BASELINES

    assert tuple(EVAL_BASELINES.split(",")) == BASELINES


def test_sasrec_ignores_padding() -> None:
    """A history's scores do not depend on how much padding precedes it: padded slots are keys no real
    position reads (without the key mask, a 3-item history's attention is spread over 17 padded slots)."""
    import torch

    from mmrecall.finetune.sasrec import SASRec, SASRecConfig, left_padded

    torch.manual_seed(0)
    model = SASRec(50, SASRecConfig(dim=16, max_len=20, dropout=0.0)).eval()
    history = [np.array([4, 9, 17])]
    with torch.no_grad():
        short = model(torch.from_numpy(left_padded(history, 3)))[:, -1]  # (1, d): no padding at all
        padded = model(torch.from_numpy(left_padded(history, 20)))[:, -1]  # (1, d): 17 padded slots first
    assert torch.allclose(short, padded, atol=1e-5), (short - padded).abs().max()
