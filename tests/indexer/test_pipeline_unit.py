"""The pipeline against its two protocols, with no server: what is parked, what is
written, and how the error budget counts flagged changes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bson import ObjectId
from bson.timestamp import Timestamp

from indexer.changes import Change, id_problem
from indexer.id_kinds import CatalogIdKind
from indexer.layout import DELETED, VECTOR
from indexer.metrics import IndexerMetrics
from indexer.pipeline import Pipeline, Target, coalesce
from indexer.settings import IndexerSettings
from indexer.sink import Action, BulkOutcome
from indexer.versioning import external_version
from towers.artifact import ModelArtifact

T = Timestamp(1_795_000_000, 1)


def _v(inc: int) -> int:
    return external_version(Timestamp(T.time, inc), 1)


@dataclass
class MemorySink:
    """Keeps every action; refuses documents whose title is "refuse" (like a mapping
    conflict would)."""

    written: list[Action] = field(default_factory=list)

    def write(self, actions: list[Action]) -> BulkOutcome:
        outcome = BulkOutcome()
        for action in actions:
            if action.document.get("title") == "refuse":
                outcome.rejected.append((action, "400 mapper_parsing_exception"))
            else:
                self.written.append(action)
        return outcome


@dataclass
class MemoryParking:
    parked: list[tuple[object, str, str]] = field(default_factory=list)
    budget: list[tuple[int, int]] = field(default_factory=list)

    def park(self, change: Change, stage: str, error: str, index: str | None = None) -> None:
        self.parked.append((change.doc_id, stage, error))

    def record(self, events: int, failed: int) -> None:
        self.budget.append((events, failed))


def _pipeline(artifact: ModelArtifact) -> tuple[Pipeline, MemorySink, MemoryParking]:
    sink, parking = MemorySink(), MemoryParking()
    ids = CatalogIdKind(None, None, kind="string")  # type: ignore[arg-type]  # known: no read
    return (Pipeline([Target("idx", artifact)], sink, parking, ids, IndexerSettings(),
                     IndexerMetrics()), sink, parking)


def _upsert(doc_id: object, inc: int, **fields: object) -> Change:
    return Change("upsert", doc_id, _v(inc), T, {"_id": doc_id, **fields}, id_problem(doc_id))


def test_flagged_and_invalid_changes_are_parked_the_rest_written(
        artifact: ModelArtifact) -> None:
    pipeline, sink, parking = _pipeline(artifact)
    pipeline.process([
        _upsert("ok", 1, title="fine"),
        _upsert({"a": 1}, 2, title="dict id"),  # unhashable: must not break coalesce
        _upsert("nan", 3, title="x", price=math.nan),
        _upsert("refuse", 4, title="refuse"),
        Change("delete", "gone", _v(5), T),
        Change("upsert", "late", 0, T, {"_id": "late"}, problem="cluster time out of range"),
    ])
    assert {a.change.doc_id for a in sink.written} == {"ok", "gone"}
    assert next(a for a in sink.written if a.change.doc_id == "gone").document[DELETED]
    assert len(next(a for a in sink.written if a.change.doc_id == "ok").document[VECTOR]) == 32
    stages = {str(doc_id): (stage, error) for doc_id, stage, error in parking.parked}
    assert stages["{'a': 1}"][1].startswith("_id: sub-document ids are not supported")
    assert stages["nan"] == ("validate", "price: expected a finite number, got nan")
    assert stages["refuse"][0] == "elasticsearch"
    assert stages["late"] == ("validate", "cluster time out of range")
    assert parking.budget == [(6, 4)]  # every parked change counts against the budget


def test_coalesce_keeps_the_newest_change_per_document() -> None:
    older, newer = _upsert("a", 1, title="old"), _upsert("a", 2, title="new")
    same_text_other_type = _upsert(1, 3, title="int id")
    kept = coalesce([newer, older, same_text_other_type, _upsert("1", 1)])
    assert (newer in kept and older not in kept and same_text_other_type in kept
            and len(kept) == 3)



def test_an_id_of_another_kind_than_the_catalogs_is_parked_not_overwriting(
        artifact: ModelArtifact) -> None:
    """1 and "1", ObjectId(x) and str(x) would be one Elasticsearch document."""
    pipeline, sink, parking = _pipeline(artifact)
    oid = ObjectId()
    pipeline.process([_upsert("1", 1, title="string one"), _upsert(1, 2, title="int one"),
                      _upsert(str(oid), 3, title="hex"), _upsert(oid, 4, title="oid"),
                      Change("delete", 7, _v(5), T)])
    assert [a.change.doc_id for a in sink.written] == ["1", str(oid)]
    reasons = {repr(doc_id): error for doc_id, _, error in parking.parked}
    assert reasons["1"].startswith("_id: integer id in a catalog of string ids")
    assert "give this document an _id of the catalog's kind (string)" in reasons["1"]
    assert reasons[repr(oid)].startswith("_id: objectid id in a catalog of string ids")
    assert reasons["7"].startswith("_id: integer id")  # a delete could tombstone "7"
