"""Model-version lifecycle: an index per version, promoted and rolled back by alias.

    published --build--> building --backfill done--> ready --promote--> serving
    serving --another promoted / rollback--> ready --retire--> retired (index deleted)
    building --backfill raises--> failed

The serving alias is the truth for recall (one atomic ``_aliases`` call moves it); the
registry state follows it and keeps the history of every change. A running daemon that
follows the registry dual-writes every version from the moment its backfill starts until
it is retired, so a ready version stays current and a rollback is instant.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from indexer.backfill import BackfillReport, backfill
from indexer.checkpoint import lag_seconds
from indexer.layout import (
    LIVE,
    delete_indices,
    model_of,
    resolve_alias,
    switch_alias,
    version_alias,
)
from indexer.service import MissingIndex, Services
from towers.registry import ModelRecord, parse_ref

log = logging.getLogger("esrec.versions")


class VersionError(Exception):
    """A lifecycle step that cannot be taken now, with the reason and what to do."""


@dataclass(frozen=True)
class VersionStatus:
    ref: str
    state: str
    index: str | None
    documents: int | None
    lag_s: float | None
    serving: bool


class Versions:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.es = services.es
        self.registry = services.registry
        self.alias = services.settings.index.serving_alias

    def serving(self) -> str | None:
        """The model version (ref) the serving alias points at, from the index's ``_meta``."""
        index = resolve_alias(self.es, self.alias)
        return None if index is None else model_of(self.es, index).get("model")

    def build(self, ref: str, progress: bool = True) -> BackfillReport:
        """Create REF's index (or resume its build) and fill it; ready once complete."""
        record = self.registry.get(ref)
        if record.state == "serving":
            raise VersionError(f"{ref} is serving; it is kept current by the indexer daemon")
        services = self.services
        try:
            target = services.target(ref)
        except MissingIndex:
            target = services.new_generation(ref, point_alias=True)
        self._set(ref, "building", f"backfill into {target.index}")
        try:
            report = backfill(services.items, services.pipeline([target]), services.checkpoints,
                              target.index, services.stop,
                              batch_size=services.settings.indexer.batch_max_docs,
                              progress=progress)
        except Exception as error:
            self._set(ref, "failed", f"backfill failed: {error}")
            raise
        if report.done:
            self._set(ref, "ready", f"backfilled {report.documents} documents")
        return report

    def promote(self, ref: str, reason: str = "promoted") -> str | None:
        """Point the serving alias at REF's index in one atomic call; returns the previous ref."""
        record = self.registry.get(ref)
        if record.state not in ("ready", "serving"):
            raise VersionError(f"{ref} is {record.state}; only a ready version can serve "
                               f"(`esrec models build {ref}` first)")
        index = self.services.index_of(ref)
        if index is None:
            raise VersionError(f"{ref} has no index; run `esrec models build {ref}`")
        previous = self.serving()
        switch_alias(self.es, self.alias, index)
        self._set(ref, "serving", f"{reason}: {self.alias} -> {index}")
        if previous is not None and previous != ref:
            self._set(previous, "ready", f"replaced by {ref} ({reason})")
        return previous

    def rollback(self) -> tuple[str | None, str]:
        """Serve the version that served before the current one again; (from, to)."""
        current = self.serving()
        candidates = [record for record in self.registry.list()
                      if record.state == "ready" and record.ref != current
                      and _last_served(record) is not None
                      and self.services.index_of(record.ref)]
        if not candidates:
            raise VersionError("no earlier serving version is kept (ready) to roll back to")
        previous = max(candidates, key=lambda record: _last_served(record) or 0.0)
        self.promote(previous.ref, reason=f"rollback from {current}")
        return current, previous.ref

    def retire(self, ref: str, grace_s: float) -> list[str]:
        """Stop writing REF, wait ``grace_s`` for readers, delete its indices; never serving."""
        if self.serving() == ref:
            raise VersionError(f"{ref} is serving; promote another version (or roll back) "
                               "before retiring it")
        self._set(ref, "retired", f"retired; indices deleted after {grace_s:g}s")
        if self.services.stop.wait(grace_s):
            raise VersionError(f"stopped during the grace period; {ref} is retired, its "
                               "indices are kept (run retire again to delete them)")
        prefix = self.services.settings.index.prefix
        indices = delete_indices(self.es, f"{version_alias(prefix, *parse_ref(ref))}-g*")
        for index in indices:
            self.services.checkpoints.forget(index)
        return indices

    def status(self) -> list[VersionStatus]:
        serving_index = resolve_alias(self.es, self.alias)
        rows = []
        for record in self.registry.list():
            index = self.services.index_of(record.ref)
            documents = lag = None
            if index is not None:
                self.es.indices.refresh(index=index)
                documents = self.es.count(index=index, query=LIVE)["count"]
                checkpoint = self.services.checkpoints.describe(index)
                lag = lag_seconds(checkpoint, time.time()) if checkpoint else None
            rows.append(VersionStatus(record.ref, record.state, index, documents, lag,
                                      index is not None and index == serving_index))
        return rows

    def _set(self, ref: str, state: str, reason: str) -> None:
        self.registry.set_state(ref, state, reason)
        log.info("model version state", extra={"model": ref, "state": state, "reason": reason})


def _last_served(record: ModelRecord) -> float | None:
    times = [entry["at"].timestamp() for entry in record.history if entry["state"] == "serving"]
    return max(times, default=None)
