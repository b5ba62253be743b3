"""Wiring: settings + servers + registry -> targets, pipeline and indexer."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from elasticsearch import Elasticsearch
from pymongo.collection import Collection
from pymongo.database import Database

from esrec.retry import Backoff
from esrec.settings import Settings
from indexer.checkpoint import Checkpoints
from indexer.daemon import Indexer
from indexer.dead_letters import DeadLetters
from indexer.layout import create_generation, resolve_alias, switch_alias, version_alias
from indexer.metrics import IndexerMetrics
from indexer.pipeline import Pipeline, Target
from indexer.quantization import SAMPLE_ITEMS, choose_index_options
from indexer.sink import ElasticsearchSink
from towers.registry import ModelRegistry, parse_ref

INACTIVE_STATES = ("retired", "failed")
SOURCE = "items"  # checkpoint namespace of the catalog change stream


class MissingIndex(RuntimeError):
    """A model version without an index yet."""


@dataclass
class Services:
    settings: Settings
    es: Elasticsearch
    db: Database
    registry: ModelRegistry
    metrics: IndexerMetrics
    stop: threading.Event

    @classmethod
    def create(cls, settings: Settings, es: Elasticsearch, db: Database,
               stop: threading.Event | None = None) -> Services:
        """The usual wiring: the registry in ``db``, fresh metrics, a stop flag."""
        return cls(settings, es, db, ModelRegistry(db, settings.mongo.collections.models),
                   IndexerMetrics(), stop or threading.Event())

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.db[self.settings.mongo.collections.checkpoints], SOURCE)

    @property
    def items(self) -> Collection:
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
            raise MissingIndex(f"{ref} has no index yet: run `esrec models build {ref}`")
        return Target(index, artifact)

    def new_generation(self, ref: str, point_alias: bool) -> Target:
        """A fresh concrete index for a version; ``point_alias`` makes it the version's."""
        artifact = self.registry.pull(ref)
        indexer = self.settings.indexer
        options, measured = indexer.index_options, {}
        if options == "auto":
            sample = list(self.items.find().limit(SAMPLE_ITEMS))
            choice = choose_index_options(self.es, artifact, sample, indexer.int8_min_recall)
            options = choice.index_options
            measured = {"int8_recall_at_10": choice.int8_recall, "recall_sample": choice.sample}
        index = create_generation(self.es, self.settings.index.prefix, artifact.manifest,
                                  artifact.sha256, indexer.projection, options, measured)
        if point_alias:
            switch_alias(self.es, version_alias(self.settings.index.prefix,
                                                artifact.manifest.name,
                                                artifact.manifest.version), index)
        return Target(index, artifact)

    def active_indices(self) -> dict[str, str]:
        """ref -> index of every version the daemon writes: registered, not retired or
        failed, with an index whose stream position was set (a backfill started). Cheap:
        no artifact is loaded, so the daemon can poll it."""
        active = {}
        for record in self.registry.list():
            if record.state in INACTIVE_STATES:
                continue
            index = self.index_of(record.ref)
            if index is not None and self.checkpoints.load(index) is not None:
                active[record.ref] = index
        return active

    def active_targets(self) -> list[Target]:
        return [self.target(ref, index) for ref, index in self.active_indices().items()]

    def follow(self, current: list[Target]) -> list[Target] | None:
        """The daemon's new targets if the active versions changed, else None."""
        wanted = self.active_indices()
        have = {target.artifact.manifest.ref: target for target in current}
        if wanted == {ref: target.index for ref, target in have.items()}:
            return None
        return [have[ref] if ref in have and have[ref].index == index
                else self.target(ref, index) for ref, index in wanted.items()]

    @property
    def dead_letters(self) -> DeadLetters:
        indexer = self.settings.indexer
        return DeadLetters(self.db[self.settings.mongo.collections.dead_letters],
                           indexer.error_budget_ratio, indexer.error_budget_window)

    def pipeline(self, targets: list[Target]) -> Pipeline:
        indexer = self.settings.indexer
        sink = ElasticsearchSink(self.es, self.metrics, self.stop,
                                 Backoff(max_s=indexer.retry_max_delay_s))
        return Pipeline(targets, sink, self.dead_letters, indexer, self.metrics)

    def indexer(self, targets: list[Target], follow: bool = False) -> Indexer:
        """The daemon; ``follow``: pick up versions that start or stop building, live."""
        return Indexer(self.items, self.pipeline(targets), self.checkpoints,
                       self.settings.indexer, self.metrics, self.stop,
                       follow=(self.follow, self.settings.rollout.follow_interval_s)
                       if follow else None)
