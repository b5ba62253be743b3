"""The Elasticsearch sink: one _bulk per batch, with a verdict for every item.

    2xx       written
    409       stale: a newer version is already there (replays, races): counted, dropped
    429, 5xx  transient: retried with backoff, the checkpoint waits
    other     permanent (e.g. a mapping conflict): the document goes to dead letters

A whole request that fails to connect, times out or gets 429/5xx is retried as a whole.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch

from indexer.changes import Change, es_id
from indexer.metrics import IndexerMetrics
from runtime.errors import Unavailable
from runtime.health import Health
from runtime.retry import Backoff, retry

TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
# only what the verdicts need: a full item echo costs Elasticsearch and us ~5% of a batch
BULK_RESPONSE_FIELDS = "errors,items.*.status,items.*.error.type,items.*.error.reason"


class TransientBulkError(Unavailable):
    """Some items failed in a way that may pass on retry."""


@dataclass(slots=True)
class Action:
    """One document write; read-only by convention (a frozen init costs 0.5 us each)."""

    change: Change
    index: str
    document: dict[str, Any]


@dataclass
class BulkOutcome:
    """What a batch's writes left to handle: the items Elasticsearch refused for good."""

    rejected: list[tuple[Action, str]] = field(default_factory=list)


def _is_transient(error: ApiError) -> bool:
    return error.meta.status in TRANSIENT_STATUSES


class ElasticsearchSink:
    def __init__(self, es: Elasticsearch, metrics: IndexerMetrics, stop: threading.Event,
                 backoff: Backoff, health: Health) -> None:
        self.es = es
        self.metrics = metrics
        self.stop = stop
        self.backoff = backoff
        self.health = health

    def write(self, actions: list[Action]) -> BulkOutcome:
        """Write every action; returns only when each has a final verdict.

        If ``stop`` is set while something is still failing, the last error propagates and
        the batch has no verdict: the caller must not move its checkpoint.
        """
        outcome = BulkOutcome()
        pending, attempt = actions, 0
        while pending:
            pending = retry(functools.partial(self._attempt, pending, outcome), what="bulk",
                            backoff=self.backoff, stop=self.stop,
                            retry_on=(TransportConnectionError, ConnectionTimeout, ApiError),
                            on_retry=lambda _: self.metrics.retries.labels("bulk").inc(),
                            health=self.health)
            if pending:  # only the transiently failed items go again
                self.metrics.retries.labels("bulk_items").inc(len(pending))
                self.health.retrying("bulk", f"{len(pending)} items refused for now "
                                             "(429/5xx), retrying")
                if self.stop.wait(self.backoff.delay(attempt)):
                    raise TransientBulkError(f"stopping with {len(pending)} items unwritten")
                attempt += 1
        if attempt:
            self.health.recovered("bulk")
        return outcome

    def _attempt(self, actions: list[Action], outcome: BulkOutcome) -> list[Action]:
        operations: list[dict[str, Any]] = []
        for action in actions:
            operations.append({"index": {"_index": action.index, "_id": es_id(action.change.doc_id),
                                         "version": action.change.version,
                                         "version_type": "external"}})
            operations.append(action.document)
        started = time.perf_counter()
        try:
            response = self.es.bulk(operations=operations, filter_path=BULK_RESPONSE_FIELDS)
        except ApiError as error:
            if _is_transient(error):
                raise
            return self._one_by_one(actions, outcome, error)
        finally:
            self.metrics.bulk_seconds.observe(time.perf_counter() - started)
        transient: list[Action] = []
        if not response.get("errors", True):  # every item written: nothing to look at
            return transient
        for action, item in zip(actions, response["items"], strict=True):
            result = item["index"]
            status = result["status"]
            if status < 300:
                continue
            if status == 409:
                self.metrics.stale.inc()
            elif status in TRANSIENT_STATUSES:
                transient.append(action)
            else:
                refusal = result.get("error", {})
                outcome.rejected.append((action, f"{status} {refusal.get('type', '')}: "
                                                 f"{refusal.get('reason', refusal)}"))
        return transient

    def _one_by_one(self, actions: list[Action], outcome: BulkOutcome,
                    error: ApiError) -> list[Action]:
        """A whole request was refused: find the culprit by writing each item alone."""
        if len(actions) == 1:
            outcome.rejected.append((actions[0], f"{error.meta.status} {error.message}"))
            return []
        return [retry_later for action in actions
                for retry_later in self._attempt([action], outcome)]
