"""Backfill: fill a new index from a scan of the collection, then hand over to the stream.

    T = the cluster's operation time now  ->  stream position of the index := T
    scan items by _id ranges, each written with version (T, 0)  ->  save the last _id
    the stream then replays every change from T on, each with a higher version

No snapshot read is needed: a document scanned after a later change carries newer
content under the older version T, and the streamed change (version > T) rewrites it.
A crash resumes the scan after the last saved _id with the same T.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.timestamp import Timestamp
from pymongo.collection import Collection
from tqdm import tqdm

from indexer.checkpoint import Checkpoints, backfill_state_id
from indexer.pipeline import Pipeline
from indexer.source import Change, Position
from indexer.versioning import external_version


@dataclass
class BackfillReport:
    index: str
    operation_time: Timestamp
    documents: int
    resumed_from: Any
    done: bool


def operation_time(items: Collection) -> Timestamp:
    """The cluster's latest operation time (T): every change after it is in the stream."""
    hello = items.database.client.admin.command("hello")
    return hello.get("operationTime") or hello["$clusterTime"]["clusterTime"]


def backfill(items: Collection, pipeline: Pipeline, checkpoints: Checkpoints, index: str,
             stop: threading.Event, batch_size: int = 500,
             progress: bool = True) -> BackfillReport:
    state_id = backfill_state_id(index)
    state = checkpoints.collection.find_one({"_id": state_id})
    if state is not None and state.get("done"):
        return BackfillReport(index, state["operation_time"], state["documents"], None, True)
    if state is None:
        state = {"_id": state_id, "operation_time": operation_time(items), "last_id": None,
                 "documents": 0, "done": False, "started_at": datetime.now(UTC)}
        checkpoints.collection.insert_one(state)
        if checkpoints.load(index) is None:  # the stream hand-over point for this index
            checkpoints.save(index, Position(None, state["operation_time"], 0))
    t, resumed_from = state["operation_time"], state["last_id"]
    version = external_version(t, 0)
    query: dict[str, Any] = {} if resumed_from is None else {"_id": {"$gt": resumed_from}}
    bar = tqdm(total=items.estimated_document_count(), initial=state["documents"],
               desc=f"backfill {index}", unit="doc", disable=None if progress else True)
    documents, last_id = state["documents"], resumed_from
    with bar:
        while not stop.is_set():
            page = list(items.find(query).sort("_id", 1).limit(batch_size))
            if not page:
                break
            pipeline.process([Change("upsert", d["_id"], version, t, d) for d in page])
            last_id, documents = page[-1]["_id"], documents + len(page)
            checkpoints.collection.update_one({"_id": state_id}, {"$set": {
                "last_id": last_id, "documents": documents}})
            query = {"_id": {"$gt": last_id}}
            bar.update(len(page))
    done = not stop.is_set()
    if done:
        pipeline.sink.es.indices.refresh(index=index)  # searchable now, not at the next tick
        checkpoints.collection.update_one({"_id": state_id}, {"$set": {
            "done": True, "finished_at": datetime.now(UTC)}})
    return BackfillReport(index, t, documents, resumed_from, done)


def _done(checkpoints: Checkpoints, index: str) -> bool | None:
    """None: no backfill into ``index`` ever started; else whether it ran to the end."""
    state = checkpoints.collection.find_one({"_id": backfill_state_id(index)})
    return None if state is None else bool(state.get("done"))


def in_progress(checkpoints: Checkpoints, index: str) -> bool:
    """A started, unfinished backfill into ``index`` (its older writes must meet tombstones)."""
    return _done(checkpoints, index) is False


def finished(checkpoints: Checkpoints, index: str) -> bool:
    """A backfill into ``index`` ran to the end."""
    return _done(checkpoints, index) is True
