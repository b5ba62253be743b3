"""The indexer's settings sections: index names, the pipeline, model-version rollouts.

``IndexerConfig`` names the sections the indexer reads; the shell's settings model has
them all, and a test or a tool can hand in anything with the same attributes.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol

from pydantic import Field, field_validator

from runtime.settings import KafkaSettings, MongoSettings, Section

# Elasticsearch index and alias names: lowercase, no leading -_+, none of \/*?"<>| ,#:
_ES_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m)$")

ProjectedType = Literal["keyword", "text", "float", "long", "date", "boolean"]
DEFAULT_PROJECTION: dict[str, ProjectedType] = {
    "title": "text", "category": "keyword", "tags": "keyword", "created_at": "date",
    "price": "float", "popularity": "float"}


class IndexSettings(Section):
    prefix: str = "esrec"  # every index name starts with it: PREFIX-NAME-vV-gN
    serving_alias: str = "esrec-items"  # the alias recall resolves; promote and rollback move it
    # Elasticsearch's index.refresh_interval for each new generation: a change is visible
    # to search once indexed and refreshed, so freshness is esrec's part plus up to this;
    # shorter costs Elasticsearch indexing throughput (existing generations keep theirs)
    refresh_interval: str = "1s"

    @field_validator("refresh_interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} is not a refresh interval: write a duration such as "
                             "1s or 500ms (a serving index must refresh, so not -1)")
        return value

    @field_validator("prefix", "serving_alias")
    @classmethod
    def _es_name(cls, name: str) -> str:
        if not _ES_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid Elasticsearch name: use lowercase letters, "
                "digits, '.', '_' and '-', starting with a letter or digit"
            )
        return name


class IndexerSettings(Section):
    """The change-stream indexer: batching, index layout, error handling."""

    # 500 docs / 8 MB / 50 ms: bulk requests of a few MB amortise the round trip while a
    # quiet stream still reaches ES within ~50 ms of the change.
    batch_max_docs: int = Field(default=500, gt=0)
    batch_max_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # of source documents in one batch
    batch_max_wait_ms: int = Field(default=50, ge=0)  # a batch goes out after this even if not full
    # source fields copied into the index document for the other recall channels
    projection: dict[str, ProjectedType] = Field(default_factory=lambda: dict(DEFAULT_PROJECTION))
    # a document without one goes to dead letters
    required_fields: list[str] = Field(default_factory=list)
    max_document_bytes: int = Field(default=1024 * 1024, gt=0)  # BSON size of the source doc
    # a backfill reads at most this many documents a second (0: as fast as the servers
    # take them), so re-embedding a catalog does not crowd out live indexing and search
    backfill_max_docs_per_s: float = Field(default=0.0, ge=0)
    # auto: measure int8_hnsw's recall@100 for the version's probe user queries over a
    # sample of real item vectors when its index is created, and use int8 only if it
    # reaches int8_min_recall (0.99: a miss in the top 100 is a lost candidate; on real
    # data a 0.96 recall@10 over item mixes cost about a point of HR@100)
    index_options: Literal["auto", "hnsw", "int8_hnsw"] = "auto"
    int8_min_recall: float = Field(default=0.99, ge=0, le=1)  # see index_options
    error_budget_ratio: float = Field(default=0.05, gt=0, le=1)  # dead letters per event
    error_budget_window: int = Field(default=1000, gt=0)  # ... over this many recent events
    # the cap of the backoff while a server is away
    retry_max_delay_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)  # SIGTERM: drain within this, then exit
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # 0: no HTTP endpoint
    # fail: exit 4 with the fix; resync: rebuild into fresh indices
    on_history_lost: Literal["fail", "resync"] = "fail"
    # delete tombstones older than this (and only when no backfill writes to the index):
    # long enough for any replay from a checkpoint to have happened
    tombstone_retention_hours: float = Field(default=72.0, gt=0)
    # embedded: `esrec indexer run` does everything; distributed: `esrec indexer relay`
    # ships changes through Kafka to `esrec indexer worker`s, and a build publishes its
    # backfill in chunks that every worker shares
    mode: Literal["embedded", "distributed"] = "embedded"
    # item-changes / item-backfill partitions when the relay or a build creates the topic:
    # the most workers that can share the load (a few per expected worker, for rebalancing)
    partitions: int = Field(default=12, gt=0, le=1000)
    # a relay that stops renewing loses the lease after this; a standby then takes over.
    # Several heartbeats (1 s) long, so a busy relay never loses it by accident
    lease_ttl_s: float = Field(default=10.0, gt=1)
    # the Kafka consumer group of `esrec indexer worker`s
    worker_group: str = "esrec-indexer-workers"
    # a killed worker's partitions move to the others after this (Kafka session timeout)
    worker_session_timeout_ms: int = Field(default=10_000, ge=1000)
    # the longest a worker may take between polls, and (Kafka uses the same figure) how
    # long a rebalance waits for every member to rejoin: a drain must fit in it
    worker_rebalance_timeout_ms: int = Field(default=300_000, ge=5000)
    # Kafka's default message.max.bytes is 1 MB: a bigger change travels as a reference
    # and the worker reads the document by id
    max_message_bytes: int = Field(default=1_000_000, gt=4096)


class RolloutSettings(Section):
    """Model-version rollouts: how the daemon follows the registry, and the promote gates."""

    follow_interval_s: float = Field(default=2.0, gt=0)  # daemon re-reads version states
    # a retired version's index is deleted after this: longer than follow_interval_s (the
    # daemon stops writing) plus the recall alias cache and the slowest in-flight query
    retire_grace_s: float = Field(default=60.0, ge=0)
    min_coverage: float = Field(default=0.999, gt=0, le=1)  # live items indexed / in MongoDB
    max_lag_s: float = Field(default=30.0, gt=0)  # checkpoint behind the catalog
    # a roll waits this long at most for a new index to come within max_lag_s (0: never)
    catch_up_timeout_s: float = Field(default=600.0, ge=0)
    vector_sample: int = Field(default=50, gt=0)  # items re-embedded and compared
    vector_tolerance: float = Field(default=1e-4, gt=0)  # max abs difference per dimension
    ann_queries: int = Field(default=20, gt=0)  # the ann gate's probe queries
    ann_k: int = Field(default=10, gt=0)  # the ann gate's top-k
    min_ann_overlap: float = Field(default=0.9, ge=0, le=1)  # kNN top-k vs exact top-k
    max_p99_ms: float = Field(default=250.0, gt=0)  # kNN latency probe on the new index
    # canary rolls (indexer.canary): the candidate against the serving version on live
    # traffic; each arm needs canary_min_requests before anything is decided
    canary_share: float = Field(default=0.1, gt=0, lt=1)
    canary_duration_s: float = Field(default=600.0, gt=0)  # then the canary decides
    canary_min_requests: int = Field(default=200, gt=0)  # per arm, before anything is decided
    canary_max_error_increase: float = Field(default=0.01, ge=0, le=1)  # error rate
    canary_max_empty_increase: float = Field(default=0.05, ge=0, le=1)  # empty or degraded
    canary_max_p99_ratio: float = Field(default=1.5, ge=1)  # p99 over the baseline's
    canary_p99_slack_ms: float = Field(default=20.0, ge=0)  # ... plus this much
    canary_min_ctr_ratio: float = Field(default=0.9, ge=0)  # clicks per request over base
    # the baseline arm's clicks before click-through is compared (0: no click needed);
    # none at all means clicks do not reach `esrec recall events`, not an equal version
    canary_min_clicks: int = Field(default=20, ge=0)
    # overlap@k with the baseline's answers (0: reported only; a better model may differ)
    canary_min_overlap: float = Field(default=0.0, ge=0, le=1)
    canary_poll_s: float = Field(default=2.0, gt=0)  # how often a roll reads the arms' figures
    # recall stops splitting traffic this long after the planned end without a verdict
    canary_expire_grace_s: float = Field(default=300.0, gt=0)
    # after a roll's promote, recall's figures for the new version are watched this long
    # (indexer.watch; 0: no watch); a broken rule promotes the previous version again
    watch_s: float = Field(default=300.0, ge=0)
    watch_max_error_rate: float = Field(default=0.01, ge=0, le=1)  # recall errors
    watch_max_empty_rate: float = Field(default=0.05, ge=0, le=1)  # empty or degraded
    watch_max_p99_ms: float = Field(default=250.0, gt=0)  # recall p99, the whole request
    # clicks per answer over the canary's baseline arm (only after a canary: the reference)
    watch_min_ctr_ratio: float = Field(default=0.9, ge=0)


class IndexConfig(Protocol):
    """What anything that reads or writes the index layout needs: the servers' names,
    the index names and the projected fields (the shell's ``Settings`` has them all)."""

    @property
    def mongo(self) -> MongoSettings: ...
    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def index(self) -> IndexSettings: ...
    @property
    def indexer(self) -> IndexerSettings: ...


class IndexerConfig(IndexConfig, Protocol):
    """The sections the indexer reads: the layout's, and the rollouts'."""

    @property
    def rollout(self) -> RolloutSettings: ...
