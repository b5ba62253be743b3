"""The two towers: item features -> item vector, user profile + behaviour -> user vector.

Both towers end in L2 normalisation, so a dot product is a cosine and Elasticsearch can
use ``dot_product`` similarity. They share embedding tables by name: the user tower pools
the same item-id and tag embeddings the item tower learns (YouTube DNN / Alibaba style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from towers.features import PAD, Feature, FeatureSpec, RecentItems, embedded, scalar_count
from towers.featurizer import EXAMPLE_AGE, NUMERIC, FittedState, table_size


def _embedding(tables: nn.ModuleDict, name: str) -> nn.Embedding:
    table = tables[name]
    assert isinstance(table, nn.Embedding)
    return table


def _pool(embedded: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the bag dimension; an all-padding bag pools to zeros."""
    total = weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
    return (embedded * weights.unsqueeze(-1)).sum(dim=1) / total


class Tower(nn.Module):
    """Embeds each feature, concatenates them with the scalar features, and runs an MLP."""

    def __init__(self, features: list[Feature], tables: nn.ModuleDict, numeric_dim: int,
                 hidden: int, out_dim: int) -> None:
        super().__init__()
        self.tables = tables
        self.embedded = [(f.name, f.table_name, f.kind) for f in embedded(features)]
        for feature in features:  # fixed position weights of recency-weighted bags
            if isinstance(feature, RecentItems) and feature.half_life > 0:
                decay = 0.5 ** (torch.arange(feature.max_len) / feature.half_life)
                self.register_buffer(f"decay_{feature.name}", decay, persistent=True)
        width = sum(_embedding(tables, table).embedding_dim
                    for _, table, _ in self.embedded) + numeric_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for name, table, kind in self.embedded:
            ids = inputs[name]
            vectors = self.tables[table](ids)
            if kind == "tag_counts":
                parts.append(_pool(vectors, inputs[f"{name}_weights"]))
            elif ids.dim() == 2:
                weights = (ids != PAD).to(vectors.dtype)
                decay = getattr(self, f"decay_{name}", None)
                parts.append(_pool(vectors, weights * decay if decay is not None else weights))
            else:
                parts.append(vectors)
        parts.append(self.numeric(inputs))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)

    def numeric(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs[NUMERIC]


class UserTower(Tower):
    """Adds the example-age input: the training example's age, 0 when serving."""

    def numeric(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([inputs[NUMERIC], inputs[EXAMPLE_AGE]], dim=1)


class TwoTower(nn.Module):
    def __init__(self, spec: FeatureSpec, state: FittedState, out_dim: int = 64,
                 hidden: int = 256) -> None:
        super().__init__()
        tables = nn.ModuleDict()
        for feature in spec.embedded():
            if feature.table_name not in tables:
                tables[feature.table_name] = nn.Embedding(
                    table_size(feature, state), feature.dim, padding_idx=PAD)
                weight = _embedding(tables, feature.table_name).weight
                nn.init.normal_(weight, std=0.05)
                with torch.no_grad():
                    weight[PAD].zero_()
        self.item_tower = side_tower(spec, "item", tables, hidden, out_dim)
        self.user_tower = side_tower(spec, "user", tables, hidden, out_dim)
        self.out_dim = out_dim


def side_features(spec: FeatureSpec, side: str) -> list[Feature]:
    return spec.item if side == "item" else spec.user


def side_tower(spec: FeatureSpec, side: str, tables: nn.ModuleDict, hidden: int,
               out_dim: int) -> Tower:
    """The tower of ``side`` ("item" or "user") over ``tables``: training builds it, and
    a start rebuilds it around kept weights (``towers.tower_cache``)."""
    features = side_features(spec, side)
    if side == "item":
        return Tower(features, tables, scalar_count(features), hidden, out_dim)
    return UserTower(features, tables, scalar_count(features) + 1, hidden, out_dim)  # + age

