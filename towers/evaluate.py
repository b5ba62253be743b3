"""Offline evaluation on the leave-last-out split: HR@K, Recall@K and NDCG@K.

Each user's held-out last item is ranked against every catalog item the user has not
interacted with before (the target itself stays a candidate even if it is a repeat).
With one held-out item per user, Recall@K equals HR@K; both are reported so the numbers
line up with papers that use either name. Ties count half, so a baseline with many
equal scores is neither flattered nor punished.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence

import numpy as np

from towers.artifact import ModelArtifact
from towers.dataset import Dataset, EvalCase, leave_last_out

K_VALUES = (10, 50, 100, 200)
_CHUNK = 512  # cases scored at once: bounds memory at CHUNK x catalog size floats


def rank_metrics(ranks: np.ndarray, k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    metrics: dict[str, float] = {"cases": float(len(ranks))}
    for k in k_values:
        hit = ranks < k
        metrics[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        metrics[f"recall@{k}"] = metrics[f"hr@{k}"]
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()
                                     ) if len(ranks) else 0.0
    return metrics


def _ranks(score_rows: Callable[[slice], np.ndarray], cases: Sequence[EvalCase],
           item_index: Mapping[str, int]) -> np.ndarray:
    ranks = []
    for start in range(0, len(cases), _CHUNK):
        chunk = cases[start:start + _CHUNK]
        scores = score_rows(slice(start, start + len(chunk))).astype(np.float64)
        for row, case in zip(scores, chunk, strict=True):
            target = item_index[case.target]
            target_score = row[target]
            seen = [item_index[i] for i in case.seen if i in item_index and i != case.target]
            row[seen] = -np.inf
            greater = int((row > target_score).sum())
            ties = int((row == target_score).sum()) - 1
            ranks.append(greater + ties / 2.0)
    return np.asarray(ranks)


def usable_cases(cases: Sequence[EvalCase], item_index: Container[str]) -> list[EvalCase]:
    """Cases whose target is in the catalog (an interaction with a deleted item cannot rank)."""
    return [case for case in cases if case.target in item_index]


def evaluate_vectors(item_vectors: np.ndarray, item_ids: Sequence[str],
                     user_vectors: np.ndarray, cases: Sequence[EvalCase],
                     k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """Metrics for a model: ``user_vectors[i]`` belongs to ``cases[i]``."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    return rank_metrics(
        _ranks(lambda rows: user_vectors[rows] @ item_vectors.T, cases, index), k_values)


def evaluate_popularity(item_counts: Mapping[str, int], item_ids: Sequence[str],
                        cases: Sequence[EvalCase],
                        k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """The most-popular baseline: every user gets the training set's most frequent items."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    popularity = np.array([item_counts.get(i, 0) for i in item_ids], dtype=np.float64)
    return rank_metrics(
        _ranks(lambda rows: np.tile(popularity, (rows.stop - rows.start, 1)), cases, index),
        k_values)


def evaluate_itemknn(history: Mapping[str, Sequence[str]], item_ids: Sequence[str],
                     cases: Sequence[EvalCase], neighbours: int = 100,
                     k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """Item-based collaborative filtering (Sarwar et al. 2001), the classic baseline a
    learned model must beat: cosine similarity of items over the users who interacted
    with them in training (``history``: user -> training items), each item keeping its
    ``neighbours`` most similar ones (0: all); a user's score for an item is the sum of
    its similarities to the items in the user's history before the target."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    users = sorted(history)
    matrix = np.zeros((len(users), len(item_ids)), np.float32)
    for row, user in enumerate(users):
        matrix[row, [index[i] for i in history[user] if i in index]] = 1.0
    norms = np.sqrt(matrix.sum(axis=0))
    norms[norms == 0] = 1.0
    unit = matrix / norms
    similarity = unit.T @ unit  # items x items, cosine
    np.fill_diagonal(similarity, 0.0)
    if 0 < neighbours < len(item_ids):
        weakest = np.argpartition(-similarity, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(similarity, weakest, 0.0, axis=1)
    profiles = np.zeros((len(cases), len(item_ids)), np.float32)
    for row, case in enumerate(cases):
        profiles[row, [index[i] for i in case.seen if i in index]] = 1.0
    return rank_metrics(_ranks(lambda rows: profiles[rows] @ similarity, cases, index),
                        k_values)


def comparison(model: dict[str, float], baseline: dict[str, float]) -> dict[str, object]:
    """Model and most-popular side by side, with the lift (model / baseline) per metric."""
    lift = {key: round(model[key] / baseline[key], 3) if baseline.get(key) else None
            for key in model if key.startswith(("hr@", "ndcg@"))}
    return {"model": model, "most_popular": baseline, "lift": lift}


def evaluate_artifact(artifact: ModelArtifact, dataset: Dataset,
                      k_values: Sequence[int] = K_VALUES) -> dict[str, object]:
    """Evaluate exported towers on the split they were trained with (from the manifest)."""
    config = artifact.manifest.training.get("config", {})
    split = leave_last_out(dataset, config.get("history_len", 50))
    item_ids = [str(item["_id"]) for item in dataset.items]
    cases = usable_cases(split.cases, set(item_ids))
    users = artifact.embed_users([c.user for c in cases], at=[c.ts for c in cases])
    items = dataset.items_for(artifact.manifest.feature_spec.relations)
    model = evaluate_vectors(artifact.embed_items(items), item_ids, users, cases,
                             k_values)
    return comparison(model, evaluate_popularity(split.item_counts, item_ids, cases, k_values))
