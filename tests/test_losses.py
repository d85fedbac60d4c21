"""Each loss term alone, on tiny tensors whose right answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmrecall.finetune import losses


def unit(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_sampled_softmax_prefers_the_matching_positive_and_log_q_lifts_popular_ones() -> None:
    users = unit([[1, 0], [0, 1]])
    matched, swapped = unit([[1, 0], [0, 1]]), unit([[0, 1], [1, 0]])
    good = losses.sampled_softmax([losses.in_batch_logits(users, matched, 0.1)])
    bad = losses.sampled_softmax([losses.in_batch_logits(users, swapped, 0.1)])
    assert good < 0.01 < 1.0 < bad
    # a positive the sampler sees often is corrected down as a negative: row 0's loss falls when the
    # other row's positive is popular (its column is shifted by -log q)
    base = losses.in_batch_logits(users, unit([[1, 0], [1, 0]]), 1.0)
    corrected = losses.in_batch_logits(users, unit([[1, 0], [1, 0]]), 1.0, log_q=torch.log(torch.tensor([0.5, 0.9])))
    assert corrected[0, 1] - base[0, 1] == pytest.approx(-math.log(0.9), abs=1e-6)
    row_loss = [F.cross_entropy(x[:1], torch.tensor([0])) for x in (base, corrected)]
    assert row_loss[1] < row_loss[0]


def test_sampled_softmax_excludes_pairs_and_weighs_rows() -> None:
    users, targets = unit([[1, 0], [1, 0]]), unit([[1, 0], [1, 0]])  # both rows share a positive
    plain = losses.in_batch_logits(users, targets, 0.5)
    excluded = losses.in_batch_logits(users, targets, 0.5, excluded=~torch.eye(2, dtype=torch.bool))
    assert losses.sampled_softmax([plain]) == pytest.approx(math.log(2), abs=1e-5)  # two equal columns
    assert losses.sampled_softmax([excluded]) == pytest.approx(0.0, abs=1e-6)  # the copy is no negative
    per_row = F.cross_entropy(plain, torch.arange(2), reduction="none")
    weighted = losses.sampled_softmax([plain], torch.tensor([3.0, 1.0]))
    assert weighted == pytest.approx(float((per_row * torch.tensor([0.75, 0.25])).sum()), abs=1e-6)


def test_random_and_hard_negatives() -> None:
    users = unit([[1, 0], [0, 1]])
    negatives = unit([[1, 0], [0.6, 0.8]])  # (M=2, d)
    logits = losses.random_negative_logits(users, negatives, 1.0, log_rate=math.log(0.5))
    assert logits.shape == (2, 2) and logits[0, 0] == pytest.approx(1 - math.log(0.5), abs=1e-6)
    collide = torch.tensor([[True, False], [False, False]])
    masked = losses.random_negative_logits(users, negatives, 1.0, collide=collide)
    assert masked[0, 0] == float("-inf") and masked[1, 1] == pytest.approx(0.8, abs=1e-6)
    hard = losses.hard_negative_logit(users, unit([[1, 0], [1, 0]]), 0.5, torch.tensor([False, True]))
    assert hard.shape == (2, 1) and hard[0, 0] == pytest.approx(2.0) and hard[1, 0] == float("-inf")
    # a hard negative as close as the positive costs more than none at all
    in_batch = losses.in_batch_logits(users, users, 0.5)
    assert losses.sampled_softmax([in_batch, hard]) > losses.sampled_softmax([in_batch])


def test_masked_item_loss_finds_the_hidden_item_and_ignores_its_copies() -> None:
    truth = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    items = torch.tensor([4, 5, 6])
    right = losses.masked_item_loss(truth * 3, truth, items, 0.1)  # scale does not matter: normalised
    wrong = losses.masked_item_loss(truth[[1, 2, 0]], truth, items, 0.1)
    assert right < 0.01 and wrong > 5
    # two slots hiding the same item: the other copy is not a negative
    twins = losses.masked_item_loss(unit([[1, 0], [1, 0]]), unit([[1, 0], [1, 0]]), torch.tensor([7, 7]), 0.1)
    assert twins == pytest.approx(0.0, abs=1e-6)


def test_interest_terms() -> None:
    interests = unit([[1, 0], [0, 1]])[None].repeat(2, 1, 1)  # (R=2, K=2, d=2), orthogonal
    match, choice = losses.best_interest(interests, unit([[0, 1], [1, 0]]))
    assert choice.tolist() == [1, 0] and match.shape == (2, 2) and not choice.requires_grad
    assert losses.disagreement(interests) == pytest.approx(0.0, abs=1e-6)
    assert losses.disagreement(unit([[1, 0], [1, 0]])[None]) == pytest.approx(1.0, abs=1e-6)
    even = torch.tensor([[5.0, 0.0], [0.0, 5.0]])  # rows route to different interests
    collapsed = torch.tensor([[5.0, 0.0], [5.0, 0.0]])  # every row to the first
    assert losses.balance(even, 0.01) == pytest.approx(1.0, abs=1e-4)
    assert losses.balance(collapsed, 0.01) == pytest.approx(2.0, abs=1e-4)
    seen: list[torch.Tensor] = []
    later = unit([[1, 0], [1, 0]])
    losses.dense_all_action(interests, later, lambda user, target: seen.append(user) or torch.zeros(()))
    assert torch.equal(seen[0], interests[:, 0])  # each row's best interest for its later item
