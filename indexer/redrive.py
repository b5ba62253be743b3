"""Dead-letter redrive: after a fix (a new featurizer, a corrected document), the parked
items go through the pipeline again with their current MongoDB state.

    select   dead letters by time (``since``) and by reason (a substring of the error)
    read     T = the server's time, then each parked item as MongoDB holds it now
             (gone: a delete tombstone)
    write    the same pipeline as the stream, into every active version, at version
             (T, 0): any live change after T still wins, as against a backfill
    settle   the selected letters leave; an item that fails again is parked anew with
             today's reason (so it is listed again, once)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from indexer.changes import Change, id_problem
from indexer.dead_letters import DeadLetters
from indexer.service import Services
from indexer.source import server_time
from indexer.versioning import external_version

BATCH = 500


@dataclass
class RedriveReport:
    letters: int = 0  # dead letters selected
    items: int = 0  # distinct items they name
    indexed: int = 0  # written (or already newer in the index)
    deleted: int = 0  # gone from MongoDB: written as tombstones
    parked_again: int = 0  # failed again, parked with the new reason
    versions: list[str] = field(default_factory=list)  # the active versions written

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def selection(since: datetime | None, reason: str | None) -> dict[str, Any]:
    """The dead letters a redrive (or a listing) takes."""
    query: dict[str, Any] = {}
    if since is not None:
        query["at"] = {"$gte": since}
    if reason:
        query["error"] = {"$regex": re.escape(reason)}
    return query


class _Recording:
    """The pipeline's parking during a redrive: park as usual, remember who failed; no
    error budget (a redrive of bad documents is expected to fail some)."""

    def __init__(self, dead_letters: DeadLetters) -> None:
        self.dead_letters = dead_letters
        self.failed: set[Any] = set()

    def park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        self.dead_letters.park(change, stage, error, index)
        self.failed.add(change.doc_id)

    def record(self, events: int, failed: int) -> None:
        """No budget here."""


def _batches(letters: list[dict[str, Any]]) -> Iterator[list[Any]]:
    ids = list(dict.fromkeys(letter["doc_id"] for letter in letters))
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]


def redrive(services: Services, since: datetime | None = None, reason: str | None = None,
            on_progress: Callable[[int], None] | None = None) -> RedriveReport:
    """Index the selected parked items again from their current state; see the module."""
    dead_letters = services.dead_letters
    letters = list(dead_letters.collection.find(selection(since, reason),
                                                {"_id": 1, "doc_id": 1}))
    report = RedriveReport(letters=len(letters))
    targets = services.active_targets()
    report.versions = [target.artifact.manifest.ref for target in targets]
    if not letters or not targets:
        return report
    parking = _Recording(dead_letters)
    pipeline = services.pipeline(targets, parking)
    now = server_time(services.items)
    version = external_version(now, 0)
    for ids in _batches(letters):
        current = {document["_id"]: document for document in services.items.find(
            {"_id": {"$in": ids}})}
        changes = [Change("upsert", doc_id, version, now, current[doc_id],
                          id_problem(doc_id)) if doc_id in current
                   else Change("delete", doc_id, version, now) for doc_id in ids]
        pipeline.process(changes)
        report.items += len(ids)
        report.deleted += sum(change.op == "delete" for change in changes)
        if on_progress is not None:
            on_progress(report.items)
    report.parked_again = len(parking.failed)
    report.indexed = report.items - report.parked_again - report.deleted
    dead_letters.collection.delete_many({"_id": {"$in": [letter["_id"]
                                                         for letter in letters]}})
    return report
