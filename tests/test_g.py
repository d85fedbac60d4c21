"""G and its towers: frequency estimation, hashing, training that learns, checkpoints, eval channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmrecall.core.dataset import leave_last_out, load_dataset
from mmrecall.core.demo_data import generate_demo
from mmrecall.core.features import hashed_buckets, id_key, keys_of
from mmrecall.encoders.content_g import load_g
from mmrecall.finetune.frequency import StreamingFrequency
from mmrecall.finetune.g_train import GTrainConfig, GTrainer, Interactions, make_config


def test_id_keys_and_buckets_are_stable() -> None:
    assert id_key("item-1") == id_key("item-1") != id_key("item-2")
    keys = keys_of(["a", "b", "c"])
    buckets = hashed_buckets(keys, 1000, 2)
    assert buckets.shape == (3, 2) and (buckets >= 0).all() and (buckets < 1000).all()
    assert np.array_equal(buckets, hashed_buckets(keys, 1000, 2))
    # the two columns are different hash functions
    assert not np.array_equal(buckets[:, 0], buckets[:, 1])


def test_streaming_frequency_estimates_rates() -> None:
    frequency = StreamingFrequency(buckets=1 << 12, hashes=3, alpha=0.1, initial_gap=50)
    every, fourth = torch.tensor([id_key("every")]), torch.tensor([id_key("fourth")])
    for step in range(1, 400):
        frequency.update(every, step)
        if step % 4 == 0:
            frequency.update(fourth, step)
    q_every, q_fourth = frequency.log_q(every).exp().item(), frequency.log_q(fourth).exp().item()
    assert q_every == pytest.approx(1.0, abs=0.05) and q_fourth == pytest.approx(0.25, abs=0.03)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset(generate_demo(tmp_path_factory.mktemp("g"), per_leaf=15, users=60))


def category_features(data) -> np.ndarray:
    """Content features that carry the category, plus noise: what a pretrained encoder would give."""
    tags = sorted({t for item in data.items for t in item.tags})
    rng = np.random.default_rng(0)
    features = rng.normal(scale=0.5, size=(data.n_items, 24)).astype(np.float32)
    for i, item in enumerate(data.items):
        features[i, tags.index(item.tags[0])] += 2.0
    return features


def test_g_training_learns_and_roundtrips(demo_data, tmp_path: Path) -> None:
    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    config = make_config(features, ("synthetic",), hidden=64, dim=16, history=20)
    trainer = GTrainer(
        config,
        features,
        [i.id for i in demo_data.items],
        demo_data.user_ids,
        GTrainConfig(epochs=6, patience=6, batch_size=32, random_negatives=32),
    )
    report = trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights))
    losses = [row["loss"] for row in report["epochs"]]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    # users like two of twelve categories; a random ranking hits about 0.18 here (repeats of seen
    # items are excluded and count as misses), v2v on the raw features 0.43
    assert report["valid_hitrate@50"] > 0.33
    directory = trainer.save(tmp_path / "g", report)
    loaded = load_g(directory)
    with torch.no_grad():
        x = torch.from_numpy(features[:5])
        assert torch.allclose(loaded.g(x), trainer.model.g(x), atol=1e-6)
    # new items are served by content: an unseen item's vector ignores its (untrained) id bias
    known = torch.zeros(demo_data.n_items, dtype=torch.bool)
    content_only = trainer.item_matrix(known)
    assert torch.allclose(content_only, trainer.item_matrix(None, content_only=True), atol=1e-6)


def test_sequence_tower_learns_with_single_activation_and_elastic_interests(demo_data, tmp_path: Path) -> None:
    """The sequence tower (causal transformer over G + position + time gaps, cate-aware interest queries,
    masked-item task, K interests with single activation) trains, records activations, drops rare
    interests, and its checkpoint round-trips."""
    from mmrecall.core.dataset import tag_matrix
    from mmrecall.finetune.g_train import best_interest_scores

    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    vocab, item_tags = tag_matrix(demo_data)
    config = make_config(
        features,
        ("synthetic",),
        hidden=64,
        dim=16,
        history=20,
        user_tower="seq",
        interests=3,
        seq_layers=1,
        tag_vocab=vocab,
    )
    trainer = GTrainer(
        config,
        features,
        [i.id for i in demo_data.items],
        demo_data.user_ids,
        GTrainConfig(epochs=6, patience=6, batch_size=32, random_negatives=32),
        item_tags=item_tags,
    )
    report = trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights, split.train_times))
    losses = [row["loss"] for row in report["epochs"]]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert report["valid_hitrate@50"] > 0.27  # well above random (about 0.18) after six short epochs
    assert trainer.gap_seqs and max(int(g.max()) for g in trainer.gap_seqs.values()) > 1  # gaps were read
    # every training row activated exactly one interest of its user, once in the recorded epoch
    assert trainer.activations.shape == (demo_data.n_users, 3)
    assert trainer.activations.sum() == report["examples"]
    assert trainer.active is not None and trainer.active.any(dim=1).all()
    users = np.unique(split.train_users)[:4]
    vectors = trainer.user_matrix([split.histories[i] for i in range(4)], users, split.history_times[:4])
    assert vectors.shape == (4, 3, 16) and torch.allclose(vectors.norm(dim=-1), torch.ones(4, 3), atol=1e-5)
    items = trainer.item_matrix(trainer.known)
    scores = best_interest_scores(vectors, items, trainer.active_interests(users, 4))
    assert scores.shape == (4, demo_data.n_items) and torch.isfinite(scores).all()
    directory = trainer.save(tmp_path / "gseq", report)
    assert torch.allclose(load_g(directory).user_tower.queries, trainer.model.user_tower.queries)


def test_load_balancing_spreads_the_rows_over_the_interests(demo_data) -> None:
    """The load-balancing term evens which interest wins the rows. Measured by what it minimises, K times
    the sum of the interests' squared shares (1: even; K: one interest wins every row). Without it the
    routing is uneven on every machine, though how uneven varies (one interest at 0.73 of the rows on
    some, two sharing 0.93 on others): at weight 10 the shares come out nearly even everywhere."""
    from mmrecall.core.dataset import tag_matrix

    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    vocab, item_tags = tag_matrix(demo_data)
    concentration = {}
    for balance in (0.0, 10.0):
        config = make_config(
            features,
            ("synthetic",),
            hidden=64,
            dim=16,
            history=20,
            user_tower="seq",
            interests=3,
            seq_layers=1,
            tag_vocab=vocab,
        )
        # the all-action loss off: it spreads the rows by itself, and this measures the balance term alone
        train = GTrainConfig(epochs=6, patience=6, batch_size=32, random_negatives=32, balance=balance, future_loss=0.0)
        trainer = GTrainer(
            config, features, [i.id for i in demo_data.items], demo_data.user_ids, train, item_tags=item_tags
        )
        trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights, split.train_times))
        shares = trainer.activations.sum(axis=0) / trainer.activations.sum()  # (K,)
        concentration[balance] = float(len(shares) * (shares**2).sum())
    assert concentration[10.0] <= 1.1 and concentration[10.0] < concentration[0.0] - 0.15, concentration


def test_sequence_tower_every_position_is_causal_and_ends_at_the_served_user() -> None:
    """One pass gives the user after every slot (training): the last slot is the user the serving forward
    gives, and the user after slot t never reads a later item."""
    from mmrecall.encoders.content_g import GConfig, TwoTower

    config = GConfig(feature_dim=8, dim=16, hidden=16, history=6, user_tower="seq", interests=3, tag_vocab=("a", "b"))
    tower = TwoTower(config).eval().user_tower
    generator = torch.Generator().manual_seed(0)
    history = torch.randn(2, 6, 16, generator=generator)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :2] = False  # a short, left-padded history
    gaps, prefs = torch.randint(0, 16, (2, 6), generator=generator), torch.rand(2, 6, 2, generator=generator)
    with torch.no_grad():
        every, _ = tower.every_position(history, mask, gaps, prefs)
        served, _ = tower(history, mask, gaps, prefs[:, -1])
        changed = history.clone()
        changed[:, 4:] = torch.randn(2, 2, 16, generator=generator)
        every_changed, _ = tower.every_position(changed, mask, gaps, prefs)
    assert every.shape == (2, 6, 3, 16)
    assert torch.allclose(every[:, -1], served, atol=1e-5)
    assert torch.allclose(every[:, :4], every_changed[:, :4], atol=1e-5)  # slots 0-3 never read slots 4-5
    assert not torch.allclose(every[:, 4:], every_changed[:, 4:], atol=1e-3)


def test_sequence_windows_train_every_next_item_once_with_context() -> None:
    config = make_config(np.zeros((50, 4), np.float32), ("synthetic",), history=8, user_tower="seq")
    trainer = GTrainer(
        config, np.zeros((50, 4), np.float32), [str(i) for i in range(50)], ["u0", "u1", "u2"], GTrainConfig()
    )
    sequences = {0: np.arange(37), 1: np.arange(3), 2: np.arange(1)}
    for run in (1, 3, 8):
        trained = {}
        for user, start, end, first in trainer.windows(sequences, run):
            assert end - start <= 8 and start <= first < end and end - first <= run
            for slot in range(first, end):
                trained[(user, slot + 1)] = trained.get((user, slot + 1), 0) + 1
                assert slot - start + 1 >= min(slot + 1, 8 - run + 1)  # at least history - run items read
        assert trained == {(u, p): 1 for u, seq in sequences.items() for p in range(1, len(seq))}


def test_training_tag_preferences_match_the_served_ones() -> None:
    """Training reads the tag preferences after every slot from running sums; serving computes them from
    the history. At a window's last slot they must agree (TAG_HISTORY items back, longer sequences too)."""
    from mmrecall.core.features import TAG_HISTORY
    from mmrecall.finetune.g_train import FitState, FlatSequences, history_matrix

    rng = np.random.default_rng(0)
    n_items, length = 60, 8
    item_tags = (rng.random((n_items, 5)) < 0.3).astype(np.float32)
    config = make_config(
        np.zeros((n_items, 4), np.float32), ("synthetic",), history=length, user_tower="seq", tag_vocab=tuple("abcde")
    )
    trainer = GTrainer(
        config,
        np.zeros((n_items, 4), np.float32),
        [str(i) for i in range(n_items)],
        ["u0", "u1"],
        GTrainConfig(),
        item_tags=item_tags,
    )
    sequences = {0: rng.integers(n_items, size=TAG_HISTORY + 40), 1: rng.integers(n_items, size=5)}
    state = FitState(
        seqs=sequences,
        flat=FlatSequences.of(sequences, None, n_items),
        known=torch.ones(n_items, dtype=torch.bool),
        frequency=None,
        hard_pool=None,
        tag_sums=trainer._tag_sums(sequences),
    )
    for user, end in ((0, TAG_HISTORY + 30), (0, 3), (1, 5)):
        start = max(0, end - length)
        index, mask = history_matrix([sequences[user][start:end]], length)
        slot_pos = start - (length - (end - start)) + np.arange(length)[None, :]
        every = trainer._tag_prefs_every_slot(np.array([user]), slot_pos, mask, state)
        served = trainer._sequence_inputs(index, mask, None, [sequences[user][:end]])["tag_pref"]
        assert torch.allclose(every[0, -1], served[0], atol=1e-6)


def test_flat_sequences_gather_what_the_per_user_lists_hold() -> None:
    """A batch is gathered from one flat array: the histories, targets, weights and 'has the user got it'
    must be those of the per-user sequences (users missing from the dict have nothing)."""
    from mmrecall.finetune.g_train import FlatSequences, history_matrix

    rng = np.random.default_rng(1)
    n_items, length = 30, 6
    sequences = {0: rng.integers(n_items, size=9), 2: rng.integers(n_items, size=3), 3: rng.integers(n_items, size=1)}
    weights = {u: rng.random(len(s)).astype(np.float32) for u, s in sequences.items()}
    flat = FlatSequences.of(sequences, weights, n_items)
    users = np.array([0, 0, 0, 2, 2, 3])
    positions = np.array([0, 4, 8, 1, 2, 0])
    assert flat.at(users, positions).tolist() == [sequences[u][p] for u, p in zip(users, positions, strict=True)]
    got_weights = flat.weights_at(users, positions).numpy()
    assert np.allclose(got_weights, [weights[u][p] for u, p in zip(users, positions, strict=True)])
    index, mask = flat.before(users, positions, length)
    expected, expected_mask = history_matrix([sequences[u][:p] for u, p in zip(users, positions, strict=True)], length)
    assert (mask == expected_mask).all() and (index[mask] == expected[expected_mask]).all()
    items = np.arange(n_items)
    for user in (0, 1, 2, 3):
        owned = set(sequences.get(user, np.array([], np.int64)).tolist())
        assert flat.has(np.full(n_items, user), items).tolist() == [i in owned for i in items]


def test_interests_that_rarely_win_are_dropped() -> None:
    from mmrecall.finetune.g_train import activity

    counts = np.array([[90, 8, 2], [30, 40, 30], [0, 0, 0]])
    keep = activity(counts, 0.1)
    assert keep.tolist() == [[True, False, False], [True, True, True], [True, True, True]]


def test_dense_all_action_targets_come_from_the_users_next_items(demo_data) -> None:
    """The all-action loss draws each row's later item from the user's next `future_window` items (the next
    one included, never past the sequence's end), spread over that window, and the tower trains with it."""
    from mmrecall.finetune.g_train import FitState, FlatSequences

    config = make_config(np.zeros((400, 4), np.float32), ("synthetic",), history=8, user_tower="seq")
    trainer = GTrainer(
        config,
        np.zeros((400, 4), np.float32),
        [str(i) for i in range(400)],
        ["u0", "u1"],
        GTrainConfig(future_window=10),
    )
    sequences = {0: np.arange(100, 400), 1: np.arange(5)}  # an item's value is its position (+100 for user 0)
    state = FitState(
        seqs=sequences,
        flat=FlatSequences.of(sequences, None, 400),
        known=torch.ones(400, dtype=torch.bool),
        frequency=None,
        hard_pool=None,
        tag_sums={},
    )
    users, next_pos = np.array([0] * 2000 + [1] * 200), np.array([50] * 2000 + [3] * 200)
    later = trainer._later_items(users, next_pos, state)
    assert set(later[:2000] - 100) == set(range(50, 60))  # all ten of the next ten, nothing else
    assert set(later[2000:]) == {3, 4}  # user 1 has only two items from position 3 on

    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    config = make_config(
        features, ("synthetic",), hidden=64, dim=16, history=20, user_tower="seq", interests=2, seq_layers=1
    )
    trainer = GTrainer(
        config,
        features,
        [i.id for i in demo_data.items],
        demo_data.user_ids,
        GTrainConfig(epochs=4, patience=4, batch_size=32, random_negatives=32, future_loss=0.5),
    )
    report = trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights, split.train_times))
    losses = [row["loss"] for row in report["epochs"]]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert report["valid_hitrate@50"] > 0.25  # random is about 0.18


@pytest.mark.parametrize("tower_kind", ["pool", "seq"])
def test_user_towers_read_the_served_vectors_in_training_and_serving(demo_data, tower_kind: str) -> None:
    """Train/serve parity of the user towers' inputs: the trainer (training steps and validation) reads a
    history as normalize(ECi + EPi), the vectors the snapshot serves. The numpy tower the API runs over
    those served vectors gives the trainer's user vector; fed the raw G outputs instead (the earlier
    training inputs), the trained tower answers differently, so the check can fail."""
    from mmrecall.finetune.export import user_tower_arrays
    from mmrecall.recall.towers import tower_from_arrays

    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    seq = {"user_tower": "seq", "interests": 2, "seq_layers": 1, "dropout": 0.0} if tower_kind == "seq" else {}
    config = make_config(features, ("synthetic",), hidden=32, dim=16, history=8, **seq)
    trainer = GTrainer(
        config,
        features,
        [i.id for i in demo_data.items],
        demo_data.user_ids,
        GTrainConfig(epochs=2, patience=2, batch_size=32, random_negatives=16),
    )
    trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights))
    with torch.no_grad():  # a trained bias must matter for the check to mean anything
        trainer.model.item_bias.table.weight.mul_(20.0)
    served = trainer.item_matrix(trainer.known).numpy()  # what the workers store and the snapshot serves
    raw = trainer.item_matrix(None, content_only=True).numpy()
    tower = tower_from_arrays(user_tower_arrays(trainer.model))
    users = np.unique(split.train_users)[:5]
    far_apart = 0
    for user in users:
        history = split.histories[int(np.flatnonzero(split.query_users == user)[0])]
        expected = trainer.user_matrix([history], np.array([user]))[0].numpy()
        key = id_key(demo_data.user_ids[user])
        got = tower(served[history], key)
        assert np.allclose(got, expected, atol=1e-4), (tower_kind, user)
        far_apart += not np.allclose(tower(raw[history], key), expected, atol=1e-2)
    assert far_apart == len(users)


@pytest.mark.parametrize("tower_kind", ["pool", "seq"])
def test_a_training_resumed_from_its_epoch_state_ends_where_an_unbroken_one_does(
    demo_data, tmp_path: Path, tower_kind: str
) -> None:
    """The state written after each epoch holds everything the next epoch reads (weights, optimizer
    moments, the best epoch so far, the random streams, log-q's estimate): a training stopped after its
    second epoch and started again from that file ends with the same weights as one that never stopped."""
    split = leave_last_out(demo_data, "test")
    features = category_features(demo_data)
    interactions = Interactions(split.train_users, split.train_items, split.train_weights, split.train_times)

    def trainer(epochs: int) -> GTrainer:
        config = make_config(features, ("synthetic",), hidden=32, dim=8, history=10, user_tower=tower_kind)
        train = GTrainConfig(epochs=epochs, patience=epochs, batch_size=64, random_negatives=16, bf16=False)
        return GTrainer(config, features, [i.id for i in demo_data.items], demo_data.user_ids, train)

    unbroken = trainer(4)
    unbroken_report = unbroken.fit(interactions, resume=tmp_path / "unbroken.pt")
    trainer(2).fit(interactions, resume=tmp_path / "broken.pt")  # stopped after epoch 2
    resumed = trainer(4)
    report = resumed.fit(interactions, resume=tmp_path / "broken.pt")
    assert report["resumed_after_epoch"] == 2 and unbroken_report["resumed_after_epoch"] == 0
    assert [e["loss"] for e in report["epochs"]] == [e["loss"] for e in unbroken_report["epochs"]]
    assert report["best_epoch"] == unbroken_report["best_epoch"]
    for name, weights in unbroken.model.state_dict().items():
        assert torch.equal(weights, resumed.model.state_dict()[name]), name
