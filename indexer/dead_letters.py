"""Dead letters: a bad document is parked with its event and the reason; the stream goes on.

The error budget makes "too much is failing" explicit: when more than ``ratio`` of the
last ``window`` events went to dead letters, the daemon stops instead of quietly
emptying the index into a collection nobody reads.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from indexer.changes import Change
from runtime.clients import MongoCollection
from runtime.errors import Refused

MAX_STORED_DOCUMENT_CHARS = 10_000  # enough to debug, bounded for oversized documents


class ErrorBudgetExceeded(Refused):
    """Too many recent events failed for good."""


class DeadLetters:
    def __init__(self, collection: MongoCollection, ratio: float, window: int) -> None:
        self.collection = collection
        self.ratio = ratio
        self.recent: deque[bool] = deque(maxlen=window)
        self.lock = threading.Lock()  # batches are accounted from several writer threads

    def park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        document = repr(change.document)
        self.collection.insert_one({
            "doc_id": change.doc_id, "op": change.op, "version": change.version,
            "cluster_time": change.cluster_time, "stage": stage, "error": error,
            "index": index, "at": datetime.now(UTC),
            "document": document[:MAX_STORED_DOCUMENT_CHARS],
            "truncated": len(document) > MAX_STORED_DOCUMENT_CHARS,
        })

    def record(self, events: int, failed: int) -> None:
        """Account a batch; raises ErrorBudgetExceeded when the window is over budget."""
        with self.lock:
            self.recent.extend([False] * (events - failed) + [True] * failed)
            failures, seen = sum(self.recent), len(self.recent)
        if seen == self.recent.maxlen and failures > self.ratio * seen:
            raise ErrorBudgetExceeded(
                f"{failures} of the last {seen} events went to dead letters "
                f"(budget {self.ratio:.0%}); see the {self.collection.name} collection")

    def count(self) -> int:
        return self.collection.estimated_document_count()

    def latest(self, limit: int = 5) -> list[dict[str, Any]]:
        return list(self.collection.find({}, {"document": 0}).sort("at", -1).limit(limit))
