from __future__ import annotations

import math

import torch

from tests.conftest import QUICK
from towers.dataset import Dataset
from towers.featurizer import EXAMPLE_AGE
from towers.train import (
    TrainConfig,
    TrainResult,
    example_inputs,
    in_batch_softmax_loss,
    train,
)


def test_trained_towers_beat_most_popular(trained: TrainResult) -> None:
    assert trained.metrics["hr@100"] >= 1.5 * trained.baseline["hr@100"], (
        trained.metrics, trained.baseline)
    assert trained.history[-1].loss < trained.history[0].loss
    assert trained.examples_per_second > 0


def test_training_is_deterministic_with_a_seed(small_dataset: Dataset,
                                               trained: TrainResult) -> None:
    again = train(small_dataset, TrainConfig(**{**QUICK.__dict__, "epochs": 1}))
    assert again.history[0].loss == trained.history[0].loss


def test_accidental_hits_are_masked() -> None:
    generator = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=1)
    items = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=1)
    no_q = torch.zeros(3)
    distinct = in_batch_softmax_loss(users, items, torch.tensor([0, 1, 2]), no_q, 0.1)
    repeated = in_batch_softmax_loss(users, items, torch.tensor([0, 0, 2]), no_q, 0.1)
    # rows 0 and 1 share an item: each no longer counts the other's column as a negative
    logits = users @ items.T / 0.1
    expected_row0 = -logits[0, 0] + torch.logsumexp(logits[0, [0, 2]], 0)
    expected_row1 = -logits[1, 1] + torch.logsumexp(logits[1, [1, 2]], 0)
    expected_row2 = -logits[2, 2] + torch.logsumexp(logits[2], 0)
    assert torch.isclose(repeated, (expected_row0 + expected_row1 + expected_row2) / 3,
                         rtol=1e-4)
    assert not torch.isclose(distinct, repeated)


def test_logq_correction_discounts_popular_negatives() -> None:
    """Each column j is shifted by -log q_j: a popular item is penalised less as a negative."""
    users = torch.eye(2)
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    rows = torch.tensor([0, 1])
    log_q = torch.tensor([math.log(0.1), math.log(0.9)])  # item 1 is the popular one
    logits = users @ items.T - log_q.unsqueeze(0)
    by_hand = torch.stack([torch.logsumexp(logits[r], 0) - logits[r, r] for r in (0, 1)]).mean()
    corrected = in_batch_softmax_loss(users, items, rows, log_q, 1.0)
    assert torch.isclose(corrected, by_hand)
    # row 0's negative (popular item 1) now weighs less than without the correction
    plain_row0 = torch.logsumexp(users[0] @ items.T, 0) - users[0] @ items[0]
    assert torch.logsumexp(logits[0], 0) - logits[0, 0] < plain_row0


def test_the_best_validation_epoch_is_exported(trained: TrainResult) -> None:
    """Selection looks at the validation users only; the model holds that epoch's weights
    and ``metrics`` are that epoch's test figures."""
    scores = [log.validation["hr@100"] for log in trained.history]
    assert trained.best_epoch == 1 + scores.index(max(scores))
    assert trained.metrics == trained.history[trained.best_epoch - 1].metrics
    assert trained.split.validation and all(log.validation for log in trained.history)


def test_patience_stops_early_and_monitor_is_checked(small_dataset: Dataset) -> None:
    import pytest

    with pytest.raises(ValueError, match="monitor must be one of"):
        TrainConfig(monitor="hr@7")
    result = train(small_dataset, TrainConfig(**{**QUICK.__dict__, "epochs": 30,
                                                 "learning_rate": 0.05, "patience": 1}))
    assert len(result.history) == result.best_epoch + 1 < 30


def test_example_age_is_an_input_only_when_asked(trained: TrainResult) -> None:
    """Off (the default) the user tower sees 0 as when serving; on, older examples carry
    a larger age, the newest 0."""
    examples = sorted(trained.split.train, key=lambda e: e.ts)
    examples = [examples[0], examples[-1]]
    end = trained.split.train_end
    off = example_inputs(trained.featurizer, examples, end, example_age=False)
    on = example_inputs(trained.featurizer, examples, end, example_age=True)
    assert off[EXAMPLE_AGE].tolist() == [[0.0], [0.0]]
    oldest, newest = on[EXAMPLE_AGE][:, 0].tolist()
    assert oldest > 0 and newest == 0.0
    assert not TrainConfig().example_age
