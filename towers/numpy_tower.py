"""A tower's forward pass in numpy, from the exported program's own weights.

The exported program stays the definition of the version; this is the serving path for
small batches: a recall request embeds one user, and torch's dispatch costs more than
the arithmetic there (measured: ~0.4 ms a call against ~0.05 ms here). It computes what
``towers.model.Tower.forward`` computes, feature by feature, and ``ModelArtifact.load``
checks the two agree within TOLERANCE on probe inputs before serving with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from towers.features import PAD, Feature, RecentItems, embedded
from towers.featurizer import EXAMPLE_AGE, NUMERIC

TOLERANCE = 1e-5  # float32 against the exported program, per component
_EPS = 1e-12  # torch.nn.functional.normalize's


def _pool(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the bag (an all-padding bag pools to zeros), as Tower's."""
    total = np.maximum(weights.sum(axis=1, keepdims=True), 1e-6)
    pooled: np.ndarray = np.einsum("bld,bl->bd", vectors, weights) / total
    return pooled


class NumpyTower:
    def __init__(self, features: list[Feature], weights: Mapping[str, np.ndarray],
                 example_age: bool) -> None:
        """``weights``: the program's state dict as float32 arrays (tables.<t>.weight,
        mlp.0/2.weight/bias, decay_<feature>); ``example_age``: the user tower's extra
        numeric input."""
        self.embedded = [(f.name, f.table_name, f.kind) for f in embedded(features)]
        self.tables = {table: np.ascontiguousarray(weights[f"tables.{table}.weight"])
                       for _, table, _ in self.embedded}
        self.decay = {f.name: np.asarray(weights[f"decay_{f.name}"], np.float32)
                      for f in features if isinstance(f, RecentItems)
                      and f"decay_{f.name}" in weights}
        self.w0 = np.ascontiguousarray(weights["mlp.0.weight"].T)
        self.b0 = weights["mlp.0.bias"]
        self.w2 = np.ascontiguousarray(weights["mlp.2.weight"].T)
        self.b2 = weights["mlp.2.bias"]
        self.example_age = example_age

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        parts = []
        for name, table, kind in self.embedded:
            ids = inputs[name]
            vectors = self.tables[table][ids]
            if kind == "tag_counts":
                parts.append(_pool(vectors, inputs[f"{name}_weights"]))
            elif ids.ndim == 2:
                weights = (ids != PAD).astype(np.float32)
                decay = self.decay.get(name)
                parts.append(_pool(vectors, weights * decay if decay is not None else weights))
            else:
                parts.append(vectors)
        parts.append(inputs[NUMERIC])
        if self.example_age:
            parts.append(inputs[EXAMPLE_AGE])
        hidden = np.maximum(np.concatenate(parts, axis=1) @ self.w0 + self.b0, 0.0)
        out = hidden @ self.w2 + self.b2
        norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), _EPS)
        normalized: np.ndarray = (out / norms).astype(np.float32)
        return normalized
