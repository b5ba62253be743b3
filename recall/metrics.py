"""Prometheus metrics of recall's two processes, each in a registry of its own: the
service (`esrec recall serve`) and the user-events consumer (`esrec recall events`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (.001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1)


class RecallMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("esrec_recall_seconds",
                                 "Full recall latency by outcome and answering version",
                                 ["outcome", "model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.channel_took = Histogram("esrec_recall_channel_seconds",
                                      "Elasticsearch time per channel search ('took')",
                                      ["channel"], buckets=LATENCY_BUCKETS,
                                      registry=self.registry)
        self.degraded = Counter("esrec_recall_degraded_total",
                                "Responses missing a channel (error) or with a partial one",
                                ["channel", "why"], registry=self.registry)
        self.seeds = Counter("esrec_recall_i2i_seeds",
                             "i2i seeds by where their vector came from: kept from an "
                             "earlier request, or looked up (an mget)", ["source"],
                             registry=self.registry)
        self.stage = Histogram("esrec_recall_stage_seconds",
                               "Time per request in each stage (STAGES)", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)


class EventMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("esrec_user_events", "User events by outcome", ["outcome"],
                              registry=self.registry)
        self.dead_letter_failures = Counter(
            "esrec_user_events_dead_letter_failures",
            "Dead letters that could not be sent (the record stays in the source topic)",
            registry=self.registry)
        self.rebalanced = Counter(
            "esrec_user_events_rebalanced_batches",
            "Batches whose commit the group refused after a rebalance (consumed again)",
            registry=self.registry)
        self.apply_seconds = Histogram("esrec_user_events_apply_seconds",
                                       "MongoDB user-state update per batch",
                                       registry=self.registry)
        self.lag = Gauge("esrec_user_events_lag",
                         "Records in the assigned partitions not yet consumed",
                         registry=self.registry)
