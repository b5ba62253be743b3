from __future__ import annotations

import numpy as np
import pytest

from towers.dataset import EvalCase
from towers.evaluate import (
    comparison,
    evaluate_itemknn,
    evaluate_popularity,
    evaluate_vectors,
    rank_metrics,
)


def test_rank_metrics_by_hand() -> None:
    metrics = rank_metrics(np.array([0.0, 9.0, 10.0, 150.0]), k_values=(10, 100))
    assert metrics["hr@10"] == 0.5 and metrics["hr@100"] == 0.75
    assert metrics["recall@10"] == metrics["hr@10"]
    expected = (1 / np.log2(2) + 1 / np.log2(11)) / 4
    assert metrics["ndcg@10"] == pytest.approx(expected)


def test_seen_items_are_excluded_but_a_repeated_target_is_not() -> None:
    items = np.eye(4, dtype=np.float32)
    user = np.array([[0.9, 0.8, 0.1, 0.0]], dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    assert evaluate_vectors(items, ids, user, [EvalCase({}, "b", 0.0, seen=set())],
                            k_values=(1,))["hr@1"] == 0.0  # a outranks b
    assert evaluate_vectors(items, ids, user, [EvalCase({}, "b", 0.0, seen={"a"})],
                            k_values=(1,))["hr@1"] == 1.0  # a was seen: excluded
    assert evaluate_vectors(items, ids, user, [EvalCase({}, "a", 0.0, seen={"a"})],
                            k_values=(1,))["hr@1"] == 1.0  # a repeat target still counts


def test_popularity_ties_count_half() -> None:
    cases = [EvalCase({}, "c", 0.0)]
    metrics = evaluate_popularity({"a": 5}, ["a", "b", "c", "d"], cases, k_values=(2, 3))
    # c ties with b and d behind a: expected rank 1 + 2/2 = 2 -> outside top 2, inside top 3
    assert (metrics["hr@2"], metrics["hr@3"]) == (0.0, 1.0)


def test_comparison_gives_lift() -> None:
    result = comparison({"hr@10": 0.4, "ndcg@10": 0.2, "cases": 5.0},
                        {"hr@10": 0.1, "ndcg@10": 0.0, "cases": 5.0})
    assert result["lift"] == {"hr@10": 4.0, "ndcg@10": None}


def test_itemknn_scores_by_similarity_to_the_history() -> None:
    """Users who took a also took b; nobody who took a took c: after a, b ranks first."""
    history = {"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["c", "d"]}
    case = EvalCase({}, "b", 0.0, seen={"a"})
    metrics = evaluate_itemknn(history, ["a", "b", "c", "d"], [case], neighbours=0,
                               k_values=(1,))
    assert metrics["hr@1"] == 1.0
    miss = EvalCase({}, "c", 0.0, seen={"a"})
    assert evaluate_itemknn(history, ["a", "b", "c", "d"], [miss], 1, (1,))["hr@1"] == 0.0
