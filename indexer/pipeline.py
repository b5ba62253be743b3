"""One batch of changes -> checked documents -> vectors per target -> one _bulk.

Shared by the live stream and the backfill: the same checks, the same towers, the same
versions, so the two settle to the same index contents.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from esrec.settings import IndexerSettings
from indexer.dead_letters import DeadLetters
from indexer.documents import DocumentRejected, project
from indexer.layout import item_document, tombstone
from indexer.metrics import IndexerMetrics
from indexer.sink import Action, ElasticsearchSink
from indexer.source import Change
from towers.artifact import ModelArtifact


@dataclass(frozen=True)
class Target:
    """A concrete index and the model version whose item tower fills it."""

    index: str
    artifact: ModelArtifact


@dataclass
class Prepared:
    """A batch ready to write: its actions, and which of its changes already failed."""

    events: int
    batch: list[Change]
    actions: list[Action]
    failed: set[int]


def coalesce(changes: list[Change]) -> list[Change]:
    """The newest change per document: older ones in the same batch would only lose (409)."""
    newest: dict[object, Change] = {}
    for change in changes:
        key = (type(change.doc_id).__name__, change.doc_id)
        if key not in newest or change.version > newest[key].version:
            newest[key] = change
    return list(newest.values())


class Pipeline:
    def __init__(self, targets: list[Target], sink: ElasticsearchSink,
                 dead_letters: DeadLetters, settings: IndexerSettings,
                 metrics: IndexerMetrics) -> None:
        self.targets = targets
        self.sink = sink
        self.dead_letters = dead_letters
        self.settings = settings
        self.metrics = metrics

    def process(self, changes: list[Change]) -> None:
        """Index a batch; returns once every write has a verdict (the checkpoint may move)."""
        if changes:
            self.commit(self.prepare(changes))

    def prepare(self, changes: list[Change]) -> Prepared:
        """Check, embed and build the bulk actions of a batch (no write yet)."""
        failed: set[int] = set()
        for op, count in Counter(change.op for change in changes).items():
            self.metrics.events.labels(op).inc(count)
        batch = coalesce(changes)
        projected: dict[int, dict] = {}
        for position, change in enumerate(batch):
            if change.op == "upsert":
                try:
                    projected[position] = project(change.document or {}, change.size_bytes,
                                                  self.settings)
                except DocumentRejected as error:
                    self._park(change, "validate", str(error))
                    failed.add(position)
        actions: list[Action] = []
        indexed_at = datetime.now(UTC).isoformat()
        for target in self.targets:
            upserts = [p for p in projected if p not in failed]
            started = time.perf_counter()
            vectors = target.artifact.embed_items([batch[p].document or {} for p in upserts])
            self.metrics.embed_seconds.observe(time.perf_counter() - started)
            self._count_fallbacks(target.artifact)
            finite = np.isfinite(vectors).all(axis=1)  # one call per batch, not per row
            for position, vector, ok in zip(upserts, vectors, finite, strict=True):
                if not ok:
                    self._park(batch[position], "embed", "the item tower returned a non-finite "
                               "vector", target.index)
                    failed.add(position)
                    continue
                actions.append(Action(batch[position], target.index, item_document(
                    vector, projected[position], batch[position].version, indexed_at)))
            actions.extend(Action(change, target.index, tombstone(change.version, indexed_at))
                           for change in batch if change.op == "delete")
        return Prepared(len(changes), batch, actions, failed)

    def commit(self, prepared: Prepared) -> None:
        """Write a prepared batch; returns once every write has a verdict."""
        outcome = self.sink.write(prepared.actions)
        for action, reason in outcome.rejected:
            self._park(action.change, "elasticsearch", reason, action.index)
            prepared.failed.add(prepared.batch.index(action.change))
        self.metrics.batch_size.observe(prepared.events)
        self.dead_letters.record(prepared.events, len(prepared.failed))

    def _park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        self.dead_letters.park(change, stage, error, index)
        self.metrics.dead_letters.labels(stage).inc()

    def _count_fallbacks(self, artifact: ModelArtifact) -> None:
        fallbacks = artifact.featurizer.fallbacks
        for (feature, reason), count in fallbacks.items():
            self.metrics.featurizer_fallbacks.labels(feature, reason).inc(count)
        fallbacks.clear()
