"""Backfill: fill a new index from a scan of the collection, then hand over to the stream.

    T = the cluster's operation time now  ->  stream position of the index := T
    SnapshotSource (pages by _id, version (T, 0)) -> drive -> save the last _id, in order
    the stream then replays every change from T on, each with a higher version

A crash resumes the scan after the last saved _id with the same T. Progress goes to a
callback (the CLI draws a bar with it); the core prints nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch

from indexer.changes import Batch, SnapshotPosition
from indexer.checkpoint import Checkpoints
from indexer.driver import drive
from indexer.pipeline import Pipeline
from indexer.settings import IndexerSettings
from indexer.snapshot import SnapshotSource
from indexer.source import server_time
from runtime.clients import MongoCollection

# (documents handed out so far, estimated total) after every saved page
OnProgress = Callable[[int, int], None]


@dataclass
class BackfillReport:
    index: str
    operation_time: Timestamp
    documents: int
    resumed_from: Any
    done: bool


def backfill(items: MongoCollection, es: Elasticsearch, pipeline: Pipeline,
             checkpoints: Checkpoints, index: str, stop: threading.Event,
             settings: IndexerSettings, on_progress: OnProgress | None = None) -> BackfillReport:
    """Fill ``index`` from a scan of ``items`` (resuming a started backfill)."""
    saved = checkpoints.backfill_state(index)
    if saved is not None and saved[1]:
        position = saved[0]
        return BackfillReport(index, position.operation_time, position.documents, None, True)
    start = checkpoints.start_backfill(index, server_time(items))
    total = items.estimated_document_count()
    last = start

    def save(batch: Batch) -> None:
        nonlocal last
        assert isinstance(batch.position, SnapshotPosition)
        last = batch.position
        checkpoints.save_backfill(index, last)
        if on_progress is not None:
            on_progress(last.documents, max(total, last.documents))

    done = drive(SnapshotSource(items, start), pipeline, save, stop, settings)
    if done:
        es.indices.refresh(index=index)  # searchable now, not at the next tick
        checkpoints.finish_backfill(index)
    return BackfillReport(index, start.operation_time, last.documents,
                          start.last_id if start.documents else None, done)
