"""Held-out new items and new users: the measurement that picks the cold-start methods.

    items  a share of the items with interactions is held out of training, as if new;
           every interaction with one of them, with the user's history before it, is a
           case: the target ranks among every item the user has not seen, with the new
           items' content-only vectors, then with their neighbours' means (towers.coldstart)
    users  a share of the users is held out of training; each one's first interaction,
           with no history but the profile, is a case: the user tower on the profile
           alone, the mean vector of the training users with the same profile, and the
           centroid of the cluster most of those users fall in

Both train a model on what is left (``towers.train``), so a run costs a training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from towers.clusters import default_k, kmeans
from towers.coldstart import ColdStart, KnownItems
from towers.dataset import Dataset, EvalCase, behaviour, time_order
from towers.evaluate import evaluate_vectors
from towers.features import Categorical, FeatureSpec
from towers.train import TrainConfig, TrainResult, item_vectors, train, user_vectors_for

K_VALUES = (10, 100)
NEIGHBOURS = (5, 10, 20)


def _held_out(ids: Sequence[str], share: float, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    count = max(1, round(share * len(ids)))
    return {ids[i] for i in rng.choice(len(ids), count, replace=False)}


def _hr(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in metrics.items()
            if key.startswith("hr@") or key == "cases"}


def measure_items(dataset: Dataset, config: TrainConfig, share: float = 0.1, seed: int = 0,
                  neighbours: Sequence[int] = NEIGHBOURS, max_cases: int = 5000,
                  spec: FeatureSpec | None = None) -> dict[str, Any]:
    """HR of held-out new items with content-only vectors and with neighbour means."""
    interacted = sorted({i.item_id for i in dataset.interactions})
    new = _held_out(interacted, share, seed)
    kept = Dataset(dataset.items, dataset.users,
                   [i for i in dataset.interactions if i.item_id not in new], dataset.related)
    result = train(kept, config, spec)
    cases = _new_item_cases(dataset, new, config.history_len, max_cases, seed)
    spec, featurizer = result.featurizer.spec, result.featurizer
    inputs = featurizer.items(dataset.items_for(spec.relations), at=result.split.train_end)
    vectors = item_vectors(result.model, inputs)
    known = KnownItems.of(spec, inputs, lambda part: item_vectors(result.model, part))
    item_ids = [str(item["_id"]) for item in dataset.items]
    users = user_vectors_for(result.model, featurizer, cases)
    figures: dict[str, Any] = {
        "new_items": len(new), "known_items": len(known.full),
        "content": _hr(evaluate_vectors(vectors, item_ids, users, cases, K_VALUES))}
    for k in neighbours:
        served = known.apply(ColdStart(items="neighbours", k=k), spec, inputs, vectors)
        figures[f"neighbours_{k}"] = _hr(evaluate_vectors(served, item_ids, users, cases,
                                                          K_VALUES))
    return figures


def _new_item_cases(dataset: Dataset, new: set[str], history_len: int, limit: int,
                    seed: int) -> list[EvalCase]:
    """Each interaction with a new item, the user as they were just before it."""
    profiles = {str(user["_id"]): user for user in dataset.users}
    tags = dataset.item_tags()
    by_user: dict[str, list[Any]] = {}
    for interaction in dataset.interactions:
        by_user.setdefault(interaction.user_id, []).append(interaction)
    cases = []
    for user_id in sorted(by_user):
        history = time_order(by_user[user_id])
        for position, interaction in enumerate(history):
            if interaction.item_id in new and position > 0:
                before = [i.item_id for i in reversed(history[:position])]
                user = {**profiles.get(user_id, {"_id": user_id}),
                        **behaviour(before, tags, history_len)}
                cases.append(EvalCase(user, interaction.item_id, interaction.ts,
                                      set(before)))
    if len(cases) > limit:
        rng = np.random.default_rng(seed)
        cases = [cases[i] for i in sorted(rng.choice(len(cases), limit, replace=False))]
    return cases


def profile_group(document: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The profile group of a user: the values of the user tower's categorical profile
    fields ("country=c3"); users without them share the empty group."""
    return "|".join(f"{field}={document.get(field)}" for field in fields)


def profile_fields(result: TrainResult) -> list[str]:
    """The user tower's categorical profile fields: what a profile group is made of."""
    return [feature.field for feature in result.featurizer.spec.user
            if isinstance(feature, Categorical)]


def measure_users(dataset: Dataset, config: TrainConfig, share: float = 0.1,
                  seed: int = 0) -> dict[str, Any]:
    """HR of held-out new users (profile, no history): the tower, the group's mean vector,
    the centroid of the group's cluster."""
    users = sorted({i.user_id for i in dataset.interactions})
    new = _held_out(users, share, seed)
    result = train(Dataset(dataset.items, dataset.users,
                           [i for i in dataset.interactions if i.user_id not in new],
                           dataset.related),
                   config)
    fields = profile_fields(result)
    profiles = {str(user["_id"]): user for user in dataset.users}
    tags = dataset.item_tags()
    firsts: dict[str, Any] = {}
    history: dict[str, list[str]] = {}
    for interaction in sorted(dataset.interactions, key=lambda i: (i.ts, i.item_id)):
        if interaction.user_id in new:
            firsts.setdefault(interaction.user_id, interaction)
        else:
            history.setdefault(interaction.user_id, []).insert(0, interaction.item_id)
    cases = [EvalCase(dict(profiles.get(user, {"_id": user})), first.item_id, first.ts)
             for user, first in sorted(firsts.items())]
    trained = [EvalCase({**profiles.get(user, {"_id": user}),
                         **behaviour(items, tags, config.history_len)}, items[0], 0.0)
               for user, items in sorted(history.items())]
    trained_vectors = user_vectors_for(result.model, result.featurizer, trained)
    groups = [profile_group(case.user, fields) for case in trained]
    clusters = kmeans("holdout", trained_vectors, default_k(len(trained_vectors)), seed)
    labels = clusters.assign(trained_vectors)
    means, centroids = {}, {}
    for group in set(groups):
        members = np.asarray([g == group for g in groups])
        means[group] = trained_vectors[members].mean(axis=0)
        centroids[group] = clusters.centroids[np.bincount(labels[members]).argmax()]
    tower = user_vectors_for(result.model, result.featurizer, cases)
    by_group = [profile_group(case.user, fields) for case in cases]
    item_ids = [str(item["_id"]) for item in dataset.items]
    vectors = item_vectors(result.model, result.featurizer.items(
        dataset.items_for(result.featurizer.spec.relations), at=result.split.train_end))
    figures: dict[str, Any] = {"new_users": len(cases), "profile_fields": fields,
                               "groups": len(means), "clusters": clusters.k}
    for name, queries in (
            ("tower", tower),
            ("group_mean", np.asarray([means.get(g, t) for g, t in zip(by_group, tower,
                                                                        strict=True)])),
            ("group_centroid", np.asarray([centroids.get(g, t) for g, t in zip(
                by_group, tower, strict=True)]))):
        figures[name] = _hr(evaluate_vectors(vectors, item_ids, queries, cases, K_VALUES))
    return figures


def choose_cold_start(dataset: Dataset, config: TrainConfig,
                      spec: FeatureSpec | None = None, share: float = 0.1,
                      seed: int = 0) -> ColdStart:
    """Measure held-out new items and keep the method (and k) with the best HR@100; a tie
    keeps the content-only vector."""
    figures = measure_items(dataset, config, share, seed, spec=spec)
    measured = {name: float(figures[name]["hr@100"]) for name in figures
                if name == "content" or name.startswith("neighbours_")}
    best = max(measured, key=lambda name: (measured[name], name == "content"))
    if best == "content":
        return ColdStart(items="content", measured=measured)
    return ColdStart(items="neighbours", k=int(best.rsplit("_", 1)[1]), measured=measured)
