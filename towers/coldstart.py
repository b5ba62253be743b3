"""Cold start: vectors for the items the model never learned by id.

An item whose id the model did not learn (new, or seen fewer than ``min_count`` times in
training) shares the out-of-vocabulary id, so the item tower embeds it from its content
(category, tags, title, price) alone. Two ways to use that:

    content     the tower's content-only vector, as it is
    neighbours  the mean of the full vectors of the k known items whose content-only
                vectors are nearest to it (Airbnb's listing embeddings for new listings):
                what users did with items like it, through their learned ids

Which one a version uses is measured (``towers.holdout``) and recorded in its manifest.
The artifact carries the known items' content-only and full vectors, so the indexer,
the gates and offline evaluation compute the same vector for a new item, with no server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from towers.features import OOV, FeatureSpec, ItemId

if TYPE_CHECKING:  # torch is imported where tensors are made: the manifest needs none
    import torch

Method = Literal["content", "neighbours"]
DEFAULT_K = 5  # MovieLens held-out new items: 5 > 10 > 20 neighbours (README)


class ColdStart(BaseModel):
    """How a version embeds an item it never learned by id (in its manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: Method = "content"
    k: int = Field(default=DEFAULT_K, gt=0)
    measured: dict[str, float] = Field(default_factory=dict)  # held-out HR@100 per method


def id_feature(spec: FeatureSpec) -> str | None:
    """The item tower's id feature, if it has one."""
    return next((f.name for f in spec.item if isinstance(f, ItemId)), None)


def unknown_rows(spec: FeatureSpec, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """Which featurized items the model does not know by id (a boolean per row)."""
    name = id_feature(spec)
    if name is None:
        return np.zeros(len(next(iter(inputs.values()))), bool)
    return np.asarray((inputs[name] == OOV).numpy())


def hide_ids(spec: FeatureSpec, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same items with every id out of vocabulary: what content alone says."""
    name = id_feature(spec)
    if name is None:
        return inputs
    import torch

    return {**inputs, name: torch.full_like(inputs[name], OOV)}


@dataclass(frozen=True)
class KnownItems:
    """The items a version learned by id: their content-only and full vectors."""

    content: np.ndarray  # (n, dims) float32, unit length
    full: np.ndarray  # (n, dims) float32, unit length

    @classmethod
    def of(cls, spec: FeatureSpec, inputs: dict[str, torch.Tensor],
           embed: Callable[[dict[str, torch.Tensor]], np.ndarray]) -> KnownItems:
        """From a featurized catalog and the item tower (``embed``)."""
        import torch

        known = ~unknown_rows(spec, inputs)
        rows = torch.from_numpy(np.flatnonzero(known))
        chosen = {key: tensor[rows] for key, tensor in inputs.items()}
        if not len(rows):
            return cls(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
        return cls(embed(hide_ids(spec, chosen)).astype(np.float32),
                   embed(chosen).astype(np.float32))

    def average(self, content: np.ndarray, k: int) -> np.ndarray:
        """Unit-length means of the full vectors of each row's k nearest known items."""
        if not len(self.full) or not len(content):
            return content
        k = min(k, len(self.full))
        scores = content @ self.content.T
        nearest = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        mean = self.full[nearest].mean(axis=1)
        norms = np.linalg.norm(mean, axis=1, keepdims=True)
        return np.asarray(mean / np.maximum(norms, 1e-12), np.float32)

    def apply(self, cold_start: ColdStart, spec: FeatureSpec,
              inputs: dict[str, torch.Tensor], vectors: np.ndarray) -> np.ndarray:
        """The vectors a version serves: ``vectors`` (the tower's), with the unknown
        items' rows replaced by their neighbours' mean when the version says so."""
        if cold_start.items != "neighbours":
            return vectors
        rows = np.flatnonzero(unknown_rows(spec, inputs))
        if len(rows):
            vectors = vectors.copy()
            vectors[rows] = self.average(vectors[rows], cold_start.k)
        return vectors
