"""Prometheus metrics of the indexer, labelled by stage, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class IndexerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("esrec_indexer_events", "Change events handled", ["op"], registry=r)
        self.batch_size = Histogram("esrec_indexer_batch_size", "Changes per batch",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000), registry=r)
        self.embed_seconds = Histogram("esrec_indexer_embed_seconds",
                                       "Featurize + item tower per batch and target", registry=r)
        # over process_cpu_seconds_total: the model's share of the process's CPU, the
        # rest is esrec's own cost (README, Benchmarks)
        self.embed_cpu = Counter("esrec_indexer_embed_cpu_seconds",
                                 "CPU seconds spent in featurize + item tower", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open files
        self.bulk_seconds = Histogram("esrec_indexer_bulk_seconds", "Elasticsearch _bulk latency",
                                      registry=r)
        self.stale = Counter("esrec_indexer_stale_writes", "409s: a newer version was there",
                             registry=r)
        self.dead_letters = Counter("esrec_indexer_dead_letters", "Documents parked",
                                    ["stage"], registry=r)
        self.retries = Counter("esrec_indexer_retries", "Transient failures retried", ["stage"],
                               registry=r)
        self.lag = Gauge("esrec_indexer_lag_seconds",
                         "How far the index is behind the newest change in MongoDB, on the "
                         "server's clock (0 while caught up)", registry=r)
        self.sequence_overflows = Counter(
            "esrec_indexer_sequence_overflows",
            "Events past the 4095th of one cluster time (they share the last sequence)",
            registry=r)
        self.checkpoints = Counter("esrec_indexer_checkpoints", "Positions saved", registry=r)
        self.featurizer_fallbacks = Counter("esrec_indexer_featurizer_fallbacks",
                                            "Fields that fell back to defaults",
                                            ["feature", "reason"], registry=r)
