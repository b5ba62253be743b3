"""Model-version lifecycle: an index per version, promoted and rolled back by alias.

    published --build--> building --backfill done--> ready --promote--> serving
    ready --canary--> canary --passed--> serving | --rolled back / aborted--> ready
    serving --another promoted / rollback--> ready --retire--> retired (index deleted)
    building --backfill raises--> failed
    history lost --resync--> each active version rebuilt into a fresh generation, aliases
                             switched (the version keeps its state)

The serving alias is the truth for recall (one atomic ``_aliases`` call moves it); the
registry state follows it and keeps the history of every change. A running daemon that
follows the registry dual-writes every version from the moment its backfill starts until
it is retired, so a ready version stays current and a rollback is instant.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from indexer.backfill import BackfillReport, OnProgress
from indexer.layout import (
    LIVE,
    delete_indices,
    model_of,
    purge_tombstones,
    resolve_alias,
    switch_alias,
    version_alias,
)
from indexer.pipeline import Target
from indexer.service import Services
from indexer.source import server_time
from runtime.errors import Refused
from towers.registry import ModelRecord, parse_ref

log = logging.getLogger("esrec.versions")
NOT_FOLLOWED = ("no indexer saved a position for this index lately: is `esrec indexer run` "
                "running (and able to write)?")


class VersionError(Refused):
    """A lifecycle step that cannot be taken now, with the reason and what to do."""


class ResyncStopped(Refused):
    """Stopped before a resync finished; the old indices keep serving."""


@dataclass(frozen=True)
class VersionStatus:
    ref: str
    state: str
    index: str | None
    documents: int | None  # live documents in the index
    lag_s: float | None  # behind the newest change in MongoDB, on the server's clock
    followed: bool  # a running indexer saved this index's position recently
    serving: bool
    checkpoint_cluster_time: int | None  # seconds of the last indexed change


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

    def build(self, ref: str, on_progress: OnProgress | None = None) -> BackfillReport:
        """Create REF's index (or resume its build) and fill it; ready once complete."""
        record = self.registry.get(ref)
        if record.state == "serving":
            raise VersionError(f"{ref} is serving; it is kept current by the indexer daemon")
        target = self.services.target_or_new(ref)
        self.set_state(ref, "building", f"backfill into {target.index}")
        try:
            report = self.services.backfill(target, on_progress)
        except Exception as error:
            self.set_state(ref, "failed", f"backfill failed: {error}")
            raise
        if report.done:
            self.set_state(ref, "ready", f"backfilled {report.documents} documents")
        return report

    def resync(self, targets: list[Target]) -> list[Target]:
        """After a history gap: rebuild every target into a fresh index from a full scan,
        then switch its version alias (and the serving alias, if it pointed there)."""
        services, rebuilt = self.services, []
        for old in targets:
            manifest = old.artifact.manifest
            fresh = services.new_generation(manifest.ref, point_alias=False)
            if not services.backfill(fresh).done:
                raise ResyncStopped(f"stopped while resyncing {manifest.ref} into "
                                    f"{fresh.index}", "run the daemon again to finish")
            switch_alias(self.es, version_alias(services.settings.index.prefix,
                                                manifest.name, manifest.version), fresh.index)
            if resolve_alias(self.es, self.alias) == old.index:
                switch_alias(self.es, self.alias, fresh.index)
            log.warning("resynced after a history gap", extra={"old": old.index,
                                                               "new": fresh.index})
            rebuilt.append(fresh)
        return rebuilt

    def promote(self, ref: str, reason: str = "promoted") -> str | None:
        """Point the serving alias at REF's index in one atomic call; returns the previous ref."""
        record = self.registry.get(ref)
        if record.state not in ("ready", "serving", "canary"):
            raise VersionError(f"{ref} is {record.state}; only a ready version can serve "
                               f"(`esrec models build {ref}` first)")
        index = self.services.index_of(ref)
        if index is None:
            raise VersionError(f"{ref} has no index; run `esrec models build {ref}`")
        previous = self.serving()
        switch_alias(self.es, self.alias, index)
        self.set_state(ref, "serving", f"{reason}: {self.alias} -> {index}")
        if previous is not None and previous != ref:
            self.set_state(previous, "ready", f"replaced by {ref} ({reason})")
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
        self.set_state(ref, "retired", f"retired; indices deleted after {grace_s:g}s")
        if self.services.stop.wait(grace_s):
            raise VersionError(f"stopped during the grace period; {ref} is retired, its "
                               "indices are kept (run retire again to delete them)")
        prefix = self.services.settings.index.prefix
        indices = delete_indices(self.es, f"{version_alias(prefix, *parse_ref(ref))}-g*")
        for index in indices:
            self.services.checkpoints.forget(index)
        return indices

    def status(self, active_only: bool = False) -> list[VersionStatus]:
        """Every version (or only those an indexer writes): state, index, live documents,
        lag on the server's clock, whether a daemon follows it, which one serves."""
        serving_index = resolve_alias(self.es, self.alias)
        server_now = server_time(self.services.items)
        wall_now = datetime.now(UTC)
        active = self.services.active_indices() if active_only else None
        rows = []
        for record in self.registry.list():
            if active is not None and record.ref not in active:
                continue
            index = self.services.index_of(record.ref)
            documents = lag = cluster_time = None
            followed = False
            if index is not None:
                self.es.indices.refresh(index=index)
                documents = self.es.count(index=index, query=LIVE)["count"]
                progress = self.services.progress(index)
                if progress is not None:
                    lag = progress.lag_s(server_now)
                    followed = progress.followed(wall_now)
                    cluster_time = progress.cluster_time.time if progress.cluster_time else None
            rows.append(VersionStatus(record.ref, record.state, index, documents, lag,
                                      followed, index is not None and index == serving_index,
                                      cluster_time))
        return rows

    def report(self) -> dict[str, Any]:
        """What `esrec indexer status` shows: catalog size, every active version's index
        and lag (and whether a daemon follows it), the dead letters."""
        rows = self.status(active_only=True)
        dead_letters = self.services.dead_letters
        return {
            "mongo_items": self.services.items.count_documents({}),
            "versions": [{**asdict(row), **({} if row.followed else {"note": NOT_FOLLOWED})}
                         for row in rows],
            "dead_letters": dead_letters.count(),
            "latest_dead_letters": [{"doc_id": str(d["doc_id"]), "stage": d["stage"],
                                     "error": d["error"]} for d in dead_letters.latest(3)],
        }

    def purge_tombstones(self, older_than: datetime) -> dict[str, int | str]:
        """Delete tombstones older than ``older_than`` from every active index, except one
        a backfill is still writing to (its older writes are what a tombstone must stop)."""
        report: dict[str, int | str] = {}
        checkpoints = self.services.checkpoints
        for index in self.services.active_indices().values():
            if checkpoints.backfill_in_progress(index):
                report[index] = "skipped: a backfill is writing to it"
            else:
                report[index] = purge_tombstones(self.es, index, older_than)
        return report

    def set_state(self, ref: str, state: str, reason: str) -> None:
        """Move ``ref`` to ``state`` in the registry (history kept) and log it."""
        self.registry.set_state(ref, state, reason)
        log.info("model version state", extra={"model": ref, "state": state, "reason": reason})


def _last_served(record: ModelRecord) -> float | None:
    times = [entry["at"].timestamp() for entry in record.history if entry["state"] == "serving"]
    return max(times, default=None)
