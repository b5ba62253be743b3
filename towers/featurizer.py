"""One featurizer turns documents into tensors, for training and for serving alike.

It never raises on a document: a missing or mistyped field falls back to the default
(padding index, or the fitted mean for numbers) and is counted in ``fallbacks``, so a
stream can watch the counts instead of dying on one odd document.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from towers.dataset import utc_seconds
from towers.features import (
    FIRST,
    OOV,
    PAD,
    Age,
    Categorical,
    EmbeddedFeature,
    Feature,
    FeatureSpec,
    ItemId,
    Numeric,
    RecentItems,
    ScalarFeature,
    TagCounts,
    Tags,
    Text,
)

if TYPE_CHECKING:  # torch is imported where tensors are made: the manifest needs none
    import torch

_TOKEN = re.compile(r"[a-z0-9]+")
_SECONDS_PER_DAY = 86_400.0
EXAMPLE_AGE = "example_age"  # user-tower input: days since the example (0 when serving)
NUMERIC = "numeric"  # tensor key of a tower's standardised scalar features
MAX_HASHED = 1 << 20  # remembered hash buckets per table (~100 MB at most)


class NumericStats(BaseModel):
    model_config = ConfigDict(frozen=True)
    mean: float
    std: float


class FittedState(BaseModel):
    """What fitting learned: vocabularies per table and statistics per scalar feature."""

    model_config = ConfigDict(frozen=True)
    vocabularies: dict[str, list[str]]
    numeric: dict[str, NumericStats]


def _get(document: Mapping[str, Any], path: str) -> Any:
    if "." not in path:  # nearly every field (hot path)
        return document.get(path)
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _key(value: Any) -> str | None:
    """The string form of a categorical value; None for what cannot be one."""
    if type(value) is str:  # nearly every value: skip the ABC checks below (hot path)
        return value
    if isinstance(value, bool) or value is None or isinstance(value, Mapping | list | float):
        return None
    return str(value)


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return utc_seconds(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def table_size(feature: EmbeddedFeature, state: FittedState) -> int:
    if feature.hash_buckets:
        return FIRST + feature.hash_buckets
    return FIRST + len(state.vocabularies[feature.table_name])


class Featurizer:
    """Documents -> dict of tensors, per tower. Build with ``fit`` or from a saved state."""

    def __init__(self, spec: FeatureSpec, state: FittedState) -> None:
        self.spec = spec
        self.state = state
        self.fallbacks: Counter[tuple[str, str]] = Counter()
        self._index = {table: {v: FIRST + i for i, v in enumerate(vocab)}
                       for table, vocab in state.vocabularies.items()}
        self._hashed: dict[str, dict[str, int]] = {}  # table -> key -> bucket row

    # -- fitting ------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        spec: FeatureSpec,
        items: Sequence[Mapping[str, Any]],
        users: Sequence[Mapping[str, Any]],
        item_counts: Mapping[str, int],
        now: float | None = None,
    ) -> Featurizer:
        """Fit vocabularies and statistics on training data.

        ``item_counts`` (interactions per item id) decides which ids get their own
        embedding: an id the model has barely seen is better served by the shared bucket.
        """
        reference = time.time() if now is None else now
        counters: dict[str, Counter[str]] = {}
        sides = [(f, items) for f in spec.item] + [(f, users) for f in spec.user]
        for feature, documents in sides:
            counter = counters.setdefault(getattr(feature, "table_name", feature.name), Counter())
            if isinstance(feature, ItemId):
                counter.update({k: c for k, c in item_counts.items() if c >= feature.min_count})
            elif isinstance(feature, Categorical | Tags | Text):
                for document in documents:
                    counter.update(_values(feature, document))
        vocabularies = {}
        for feature in spec.embedded():
            if feature.max_vocab and feature.table_name not in vocabularies:
                counter = counters.get(feature.table_name, Counter())
                # ties broken by value so the same data always gives the same vocabulary
                ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
                vocabularies[feature.table_name] = [v for v, _ in ranked[: feature.max_vocab]]
        numeric = {}
        for feature, documents in sides:
            if isinstance(feature, Numeric | Age):
                values = [v for d in documents
                          if (v := _scalar(feature, d, reference)) is not None]
                mean = sum(values) / len(values) if values else 0.0
                var = sum((v - mean) ** 2 for v in values) / len(values) if values else 1.0
                numeric[feature.name] = NumericStats(mean=mean, std=math.sqrt(var) or 1.0)
        return cls(spec, FittedState(vocabularies=vocabularies, numeric=numeric))

    # -- featurization ------------------------------------------------------------------

    def items(self, documents: Sequence[Mapping[str, Any]],
              at: float | None = None) -> dict[str, torch.Tensor]:
        """Item-tower inputs; ``at`` (epoch seconds) is "now" for age features."""
        return _torch(self.item_arrays(documents, at))

    def item_arrays(self, documents: Sequence[Mapping[str, Any]],
                    at: float | None = None) -> dict[str, np.ndarray]:
        return self._arrays(self.spec.item, documents, [at or time.time()] * len(documents))

    def users(
        self,
        documents: Sequence[Mapping[str, Any]],
        at: Sequence[float] | None = None,
        example_age_days: Sequence[float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """User-tower inputs. Training passes each example's time and age; serving neither."""
        return _torch(self.user_arrays(documents, at, example_age_days))

    def user_arrays(
        self,
        documents: Sequence[Mapping[str, Any]],
        at: Sequence[float] | None = None,
        example_age_days: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """``users`` as numpy arrays (the serving path computes the tower in numpy)."""
        reference = list(at) if at is not None else [time.time()] * len(documents)
        arrays = self._arrays(self.spec.user, documents, reference)
        ages = example_age_days if example_age_days is not None else [0.0] * len(documents)
        arrays[EXAMPLE_AGE] = np.asarray(ages, np.float32).reshape(len(documents), 1)
        return arrays

    def _arrays(self, features: list[Feature], documents: Sequence[Mapping[str, Any]],
                at: Sequence[float]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        scalars: list[list[float]] = []
        rows = len(documents)
        for feature in features:
            if isinstance(feature, Numeric | Age):
                scalars.append([self._standardised(feature, d, t) for d, t in zip(documents, at,
                                                                                 strict=True)])
            elif isinstance(feature, Tags | Text | RecentItems):
                arrays[feature.name] = np.asarray(
                    [self._bag(feature, d) for d in documents], np.int64).reshape(
                    rows, feature.max_len)
            elif isinstance(feature, TagCounts):
                pairs = [self._weighted_bag(feature, d) for d in documents]
                arrays[feature.name] = np.asarray([p[0] for p in pairs], np.int64).reshape(
                    rows, feature.max_len)
                arrays[f"{feature.name}_weights"] = np.asarray(
                    [p[1] for p in pairs], np.float32).reshape(rows, feature.max_len)
            else:
                arrays[feature.name] = np.asarray(
                    [self._single(feature, d) for d in documents], np.int64).reshape(rows)
        arrays[NUMERIC] = (np.ascontiguousarray(np.asarray(scalars, np.float32).T) if scalars
                           else np.zeros((rows, 0), np.float32))
        return arrays

    def _lookup(self, feature: EmbeddedFeature, key: str) -> int:
        return self._lookups(feature, [key])[0]

    def _lookups(self, feature: EmbeddedFeature, keys: Sequence[str]) -> list[int]:
        """Table rows of ``keys``: the fitted vocabulary's, or hash buckets (remembered:
        titles repeat their tokens, and a crc32 per token per item adds up)."""
        if not feature.hash_buckets:
            index = self._index[feature.table_name]
            return [index.get(key, OOV) for key in keys]
        memo = self._hashed.setdefault(feature.table_name, {})
        if len(memo) > MAX_HASHED:
            memo.clear()
        rows = []
        for key in keys:
            row = memo.get(key)
            if row is None:
                row = memo[key] = FIRST + zlib.crc32(key.encode()) % feature.hash_buckets
            rows.append(row)
        return rows

    def _single(self, feature: Categorical | ItemId, document: Mapping[str, Any]) -> int:
        raw = _get(document, feature.field)
        key = _key(raw)
        if key is None:
            self.fallbacks[(feature.name, "missing" if raw is None else "mistyped")] += 1
            return PAD
        return self._lookup(feature, key)

    def _bag(self, feature: Tags | Text | RecentItems, document: Mapping[str, Any]) -> list[int]:
        raw = _get(document, feature.field)
        if isinstance(feature, Text):
            values = tokens(raw) if isinstance(raw, str) else None
        else:
            values = [k for v in raw if (k := _key(v)) is not None] if isinstance(
                raw, list) else None
        if values is None:
            self.fallbacks[(feature.name, "missing" if raw is None else "mistyped")] += 1
            values = []
        if len(values) > feature.max_len:
            self.fallbacks[(feature.name, "truncated")] += 1
        ids = self._lookups(feature, values[: feature.max_len])
        return ids + [PAD] * (feature.max_len - len(ids))

    def _weighted_bag(self, feature: TagCounts,
                      document: Mapping[str, Any]) -> tuple[list[int], list[float]]:
        raw = _get(document, feature.field)
        if not isinstance(raw, Mapping):
            self.fallbacks[(feature.name, "missing" if raw is None else "mistyped")] += 1
            raw = {}
        counts = [(str(k), float(v)) for k, v in raw.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)
                  and math.isfinite(v) and v > 0]
        counts.sort(key=lambda kv: (-kv[1], kv[0]))  # keep the strongest when truncating
        if len(counts) > feature.max_len:
            self.fallbacks[(feature.name, "truncated")] += 1
        counts = counts[: feature.max_len]
        pad = feature.max_len - len(counts)
        return (self._lookups(feature, [k for k, _ in counts]) + [PAD] * pad,
                [w for _, w in counts] + [0.0] * pad)

    def _standardised(self, feature: ScalarFeature, document: Mapping[str, Any],
                      at: float) -> float:
        value = _scalar(feature, document, at)
        if value is None:
            raw = _get(document, feature.field)
            self.fallbacks[(feature.name, "missing" if raw is None else "mistyped")] += 1
            return 0.0  # the fitted mean
        stats = self.state.numeric[feature.name]
        return (value - stats.mean) / stats.std


def _torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _values(feature: Categorical | Tags | Text, document: Mapping[str, Any]) -> Iterable[str]:
    raw = _get(document, feature.field)
    if isinstance(feature, Text):
        return tokens(raw) if isinstance(raw, str) else []
    if isinstance(feature, Tags):
        return [k for v in raw if (k := _key(v)) is not None] if isinstance(raw, list) else []
    key = _key(raw)
    return [key] if key is not None else []


def _scalar(feature: ScalarFeature, document: Mapping[str, Any], at: float) -> float | None:
    raw = _get(document, feature.field)
    if isinstance(feature, Age):
        seconds = _epoch_seconds(raw)
        if seconds is None:
            return None
        return math.log1p(max(at - seconds, 0.0) / _SECONDS_PER_DAY)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return math.log1p(max(float(raw), 0.0)) if feature.log else float(raw)
