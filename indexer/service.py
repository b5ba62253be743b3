"""Wiring: settings + servers + registry -> targets, pipelines, the daemon and backfills.

Nothing here talks to a server at construction: a process starts while its servers are
down and waits for them where it first needs them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch

from indexer.backfill import BackfillReport, OnProgress, backfill, backfill_via_workers
from indexer.changes import Position
from indexer.checkpoint import Checkpoints, Progress, earliest
from indexer.daemon import Indexer, Resync
from indexer.dead_letters import DeadLetters
from indexer.follower import Follower
from indexer.id_kinds import CatalogIdKind
from indexer.layout import (
    create_generation,
    indices_behind,
    resolve_alias,
    switch_alias,
    version_alias,
)
from indexer.lease import Lease, lease_id
from indexer.metrics import IndexerMetrics
from indexer.offsets import TopicCheckpoint, TopicOffsets
from indexer.pipeline import Parking, Pipeline, Target
from indexer.quantization import SAMPLE_ITEMS, K, choose_index_options
from indexer.relations import Related, relations_of
from indexer.relay import Relay
from indexer.settings import IndexerConfig
from indexer.sink import ElasticsearchSink
from indexer.topic_source import TopicSource, WorkerMetrics
from indexer.worker import Worker
from runtime.clients import MongoCollection, MongoDatabase
from runtime.errors import Refused
from runtime.health import Health
from runtime.retry import Backoff
from towers.manifest import Manifest
from towers.registry import ModelRegistry, parse_ref
from towers.relations import Relation

INACTIVE_STATES = ("retired", "failed")
SOURCE = "items"  # checkpoint namespace of the catalog change stream


class MissingIndex(Refused):
    """A model version without an index yet."""


@dataclass
class Services:
    settings: IndexerConfig
    es: Elasticsearch
    db: MongoDatabase
    registry: ModelRegistry
    metrics: IndexerMetrics
    stop: threading.Event
    health: Health = field(default_factory=Health)

    @classmethod
    def create(cls, settings: IndexerConfig, es: Elasticsearch, db: MongoDatabase,
               stop: threading.Event | None = None) -> Services:
        """The usual wiring: the registry in ``db``, fresh metrics, a stop flag, and a
        health whose "stalled" allows for the longest retry wait."""
        return cls(settings, es, db, ModelRegistry(db, settings.mongo.collections.models),
                   IndexerMetrics(), stop or threading.Event(),
                   Health(stalled_after_s=max(30.0, 2 * settings.indexer.retry_max_delay_s)))

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.db[self.settings.mongo.collections.checkpoints], SOURCE)

    def progress(self, index: str) -> Progress | None:
        """Where ``index`` stands in the change stream: its workers' progress (through
        the relay's marks) if workers write it, else its daemon's checkpoint."""
        return self.workers_progress(index) or self.checkpoints.progress(index)

    def workers_progress(self, index: str) -> Progress | None:
        """What the workers indexed of ``index`` (None: no worker writes it)."""
        relayed = TopicOffsets(self.checkpoints.collection, self.settings.kafka.topics.item_changes)
        return relayed.progress(index, lease_id(SOURCE))

    @property
    def items(self) -> MongoCollection:
        return self.db[self.settings.mongo.collections.items]

    def index_of(self, ref: str) -> str | None:
        """The concrete index behind a version's alias, if it has one."""
        return resolve_alias(self.es, version_alias(self.settings.index.prefix,
                                                    *parse_ref(ref)))

    def target(self, ref: str, index: str | None = None) -> Target:
        """The existing index of a model version (pulled and verified from the registry)."""
        artifact = self.registry.pull(ref)
        index = index or self.index_of(ref)
        if index is None:
            raise MissingIndex(f"{ref} has no index yet", f"run `esrec models build {ref}`")
        return Target(index, artifact)

    def target_or_new(self, ref: str) -> Target:
        """The version's index, or a fresh one the version's alias points at."""
        try:
            return self.target(ref)
        except MissingIndex:
            return self.new_generation(ref, point_alias=True)

    def new_generation(self, ref: str, point_alias: bool) -> Target:
        """A fresh concrete index for a version; ``point_alias`` makes it the version's."""
        artifact = self.registry.pull(ref)
        indexer = self.settings.indexer
        options: str = indexer.index_options
        measured: dict[str, Any] = {}
        if options == "auto":
            sample = Related(self.db).enrich(artifact.manifest.feature_spec.relations,
                                             list(self.items.find().limit(SAMPLE_ITEMS)))
            choice = choose_index_options(self.es, artifact, sample, indexer.int8_min_recall)
            options = choice.index_options
            measured = {"int8_recall": choice.int8_recall, "int8_recall_k": K,
                        "recall_sample": choice.sample, "recall_queries": choice.queries}
        index = create_generation(self.es, self.settings.index.prefix, artifact.manifest,
                                  artifact.sha256, indexer.projection, options, measured,
                                  self.settings.index.refresh_interval)
        if point_alias:
            switch_alias(self.es, version_alias(self.settings.index.prefix,
                                                artifact.manifest.name,
                                                artifact.manifest.version), index)
        return Target(index, artifact)

    def active_indices(self) -> dict[str, str]:
        """ref -> index of every version the daemon writes: registered, not retired or
        failed, with an index whose stream position was set (a backfill started). Cheap:
        no artifact is loaded and three reads answer it whatever the number of versions
        (states, aliases, positions), so the daemon and the workers can poll it."""
        prefix = self.settings.index.prefix
        aliases = {version_alias(prefix, *parse_ref(ref)): ref
                   for ref, state in self.registry.states().items()
                   if state not in INACTIVE_STATES}
        indices = {aliases[alias]: index
                   for alias, index in indices_behind(self.es, prefix, aliases).items()}
        started = self.checkpoints.started(indices.values())
        return {ref: index for ref, index in indices.items() if index in started}

    def active_targets(self) -> list[Target]:
        return [self.target(ref, index) for ref, index in self.active_indices().items()]

    @property
    def dead_letters(self) -> DeadLetters:
        indexer = self.settings.indexer
        return DeadLetters(self.db[self.settings.mongo.collections.dead_letters],
                           indexer.error_budget_ratio, indexer.error_budget_window)

    @cached_property
    def id_kinds(self) -> CatalogIdKind:
        """The catalog's one kind of _id, read once per process."""
        return CatalogIdKind(self.checkpoints.collection, self.items)

    def pipeline(self, targets: list[Target], parking: Parking | None = None) -> Pipeline:
        """The pipeline into ``targets``; bad documents to ``parking`` (default: the
        dead-letter collection with its error budget)."""
        indexer = self.settings.indexer
        sink = ElasticsearchSink(self.es, self.metrics, self.stop,
                                 Backoff(max_s=indexer.retry_max_delay_s), self.health)
        return Pipeline(targets, sink, parking or self.dead_letters, self.id_kinds, indexer,
                        self.metrics, Related(self.db))

    def backfill(self, target: Target, on_progress: OnProgress | None = None) -> BackfillReport:
        """Fill ``target``'s index from a scan of the items (resumable): in this process,
        or shared by the workers in the distributed mode."""
        if self.settings.indexer.mode == "distributed":
            return backfill_via_workers(self.items, self.es, self.checkpoints, target,
                                        self.stop, self.settings, on_progress)
        return backfill(self.items, self.es, self.pipeline([target]), self.checkpoints,
                        target.index, self.stop, self.settings.indexer, on_progress)

    def follower(self) -> Follower:
        return Follower(self.active_indices, self.target, self.settings.rollout.follow_interval_s)

    def indexer(self, targets: list[Target], follow: bool = False,
                resync: Resync | None = None) -> Indexer:
        """The daemon; ``follow``: pick up versions that start or stop building, live;
        ``resync``: what to do when the history is lost (None: stop with the reason)."""
        def workers_watermark(index: str) -> Timestamp | None:
            progress = self.workers_progress(index)
            return progress.watermark if progress is not None else None

        return Indexer(self.items, self.pipeline(targets), self.checkpoints,
                       self.settings.indexer, self.metrics, self.stop, self.health,
                       self.follower() if follow else None, resync, workers_watermark)

    def worker(self, targets: list[Target], follow: bool = True,
               resync: Resync | None = None) -> Worker:
        """An indexer worker (distributed mode): its share of the item-changes topic."""
        pipeline = self.pipeline(targets)
        checkpoints = self.checkpoints
        offsets = TopicOffsets(checkpoints.collection, self.settings.kafka.topics.item_changes)
        checkpoint = TopicCheckpoint(offsets, checkpoints,
                                     lambda: [target.index for target in pipeline.targets])
        metrics = WorkerMetrics(self.metrics.registry)

        def chunk_target(ref: str, index: str) -> Target:  # a live one: no second load
            live = [target for target in pipeline.targets if target.index == index]
            return live[0] if live else self.target(ref, index)

        source = TopicSource(self.settings, self.items, offsets, checkpoints, checkpoint,
                             chunk_target, metrics)

        def resolve(ref: str, index: str) -> Target:  # a version its chunks loaded: reused
            return source.targets.get(index) or self.target(ref, index)

        follower = Follower(self.active_indices, resolve, self.settings.rollout.follow_interval_s)
        return Worker(source, checkpoint, pipeline, checkpoints.collection,
                      self.settings.indexer, metrics, self.stop, self.health,
                      follower if follow else None, resync,
                      self.settings.rollout.follow_interval_s)

    def relay(self, holder: str) -> Relay:
        """The change-stream relay (distributed mode); ``holder`` names it in the lease."""
        lease = Lease(self.checkpoints.collection, SOURCE, holder,
                      self.settings.indexer.lease_ttl_s)

        def first_position() -> Position | None:  # where an embedded daemon left off
            positions = [p for index in self.active_indices().values()
                         if (p := self.checkpoints.load(index)) is not None]
            return earliest(positions) if positions else None

        def relations() -> list[Relation]:
            """What the active versions join items with, from their registered manifests:
            this runs every follow interval, and loading their towers took most of the
            relay's CPU."""
            return relations_of([Manifest.model_validate(self.registry.get(ref).manifest)
                                 for ref in self.active_indices()])

        return Relay(self.settings, self.items, lease, first_position, self.stop, self.health,
                     relations=relations)
