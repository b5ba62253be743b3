"""One batch of changes -> checked documents -> vectors per target -> one _bulk.

    prepare: park what a source flagged (unsupported _id, unversionable) or whose _id is
             not of the catalog's kind (indexer.id_kinds) -> coalesce ->
             documents.project (checks) -> item tower per target -> actions
    commit:  Sink.write (a verdict per item) -> Elasticsearch refusals parked -> budget

Shared by the live stream, the backfill and the Kafka workers: the same checks, the same
towers, the same versions, so every path settles to the same index contents. It talks
to its neighbours through two small protocols, ``Sink`` and ``Parking``, so it has unit
tests that need no server.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from indexer.changes import Change
from indexer.documents import DocumentRejected, Projection
from indexer.id_kinds import IdKinds
from indexer.layout import item_document, tombstone
from indexer.metrics import IndexerMetrics
from indexer.relations import Related, embed
from indexer.settings import IndexerSettings
from indexer.sink import Action, BulkOutcome

if TYPE_CHECKING:
    from towers.artifact import ModelArtifact


@dataclass(frozen=True)
class Target:
    """A concrete index and the model version whose item tower fills it."""

    index: str
    artifact: ModelArtifact


class Sink(Protocol):
    def write(self, actions: list[Action]) -> BulkOutcome:
        """Every action written or refused for good; raises if neither can be known."""


class Parking(Protocol):
    """Where a change that cannot be indexed goes, and the error budget over batches."""

    def park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        ...

    def record(self, events: int, failed: int) -> None: ...


@dataclass
class Prepared:
    """A batch ready to write: its actions, and which of its changes already failed."""

    events: int
    batch: list[Change]
    actions: list[Action]
    failed: set[int]  # positions in ``batch``
    flagged: int = 0  # changes the source flagged, parked before the batch was coalesced


def coalesce(changes: list[Change]) -> list[Change]:
    """The newest change per document: older ones in the same batch would only lose (409)."""
    newest: dict[tuple[str, Any], Change] = {}
    for change in changes:
        key = (type(change.doc_id).__name__, change.doc_id)
        if key not in newest or change.version > newest[key].version:
            newest[key] = change
    return list(newest.values())


class Pipeline:
    def __init__(self, targets: list[Target], sink: Sink, dead_letters: Parking,
                 ids: IdKinds, settings: IndexerSettings, metrics: IndexerMetrics,
                 related: Related | None = None) -> None:
        self.targets = targets
        self.sink = sink
        self.dead_letters = dead_letters
        self.ids = ids
        self.metrics = metrics
        self.related = related  # joins items with related documents (None: no server)
        self.project = Projection(settings)  # the settings' checks, planned once

    def process(self, changes: list[Change]) -> None:
        """Index a batch; returns once every write has a verdict (the checkpoint may move)."""
        if changes:
            self.commit(self.prepare(changes))

    def prepare(self, changes: list[Change], targets: list[Target] | None = None) -> Prepared:
        """Check, embed and build the bulk actions of a batch (no write yet) for
        ``targets`` (default: the pipeline's)."""
        for op, count in Counter(change.op for change in changes).items():
            self.metrics.events.labels(op).inc(count)
        valid: list[Change] = []
        flagged = 0
        for change in changes:
            if change.problem is None and (problem := self.ids.problem(change.doc_id)):
                change = replace(change, problem=problem)
            if change.problem is None:
                valid.append(change)
            else:
                self._park(change, "validate", change.problem)
                flagged += 1
        batch = coalesce(valid)
        failed: set[int] = set()
        upserts: list[int] = []  # positions in ``batch``, beside their projections
        projections: list[dict[str, Any]] = []
        for position, change in enumerate(batch):
            if change.op == "upsert":
                try:
                    projections.append(self.project(change.document or {}, change.size_bytes))
                except DocumentRejected as error:
                    self._park(change, "validate", str(error))
                    failed.add(position)
                    continue
                upserts.append(position)
        actions: list[Action] = []
        indexed_at = datetime.now(UTC).isoformat()
        documents = [batch[position].document or {} for position in upserts]
        for target in self.targets if targets is None else targets:
            started, cpu_started = time.perf_counter(), time.thread_time()
            vectors = embed(target.artifact, documents, self.related)
            self.metrics.embed_seconds.observe(time.perf_counter() - started)
            self.metrics.embed_cpu.inc(time.thread_time() - cpu_started)
            self._count_fallbacks(target.artifact)
            finite = np.isfinite(vectors).all(axis=1)  # one call per batch, not per row
            for position, projected, vector, ok in zip(upserts, projections, vectors, finite,
                                                       strict=True):
                change = batch[position]
                if ok:
                    actions.append(Action(change, target.index, item_document(
                        vector, projected, change.version, indexed_at)))
                else:
                    self._park(change, "embed", "the item tower returned a non-finite vector",
                               target.index)
                    failed.add(position)
            actions.extend(Action(change, target.index, tombstone(change.version, indexed_at))
                           for change in batch if change.op == "delete")
        return Prepared(len(changes), batch, actions, failed, flagged)

    def commit(self, prepared: Prepared) -> None:
        """Write a prepared batch; returns once every write has a verdict."""
        if prepared.actions:
            outcome = self.sink.write(prepared.actions)
            for action, reason in outcome.rejected:
                self._park(action.change, "elasticsearch", reason, action.index)
                prepared.failed.add(prepared.batch.index(action.change))
        self.metrics.batch_size.observe(prepared.events)
        self.dead_letters.record(prepared.events, len(prepared.failed) + prepared.flagged)

    def _park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        self.dead_letters.park(change, stage, error, index)
        self.metrics.dead_letters.labels(stage).inc()

    def _count_fallbacks(self, artifact: ModelArtifact) -> None:
        fallbacks = artifact.featurizer.fallbacks
        for (feature, reason), count in fallbacks.items():
            self.metrics.featurizer_fallbacks.labels(feature, reason).inc(count)
        fallbacks.clear()
