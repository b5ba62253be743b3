"""The model registry in MongoDB: artifact files in GridFS, one document per version.

A published ``name@version`` is immutable: publishing the same bytes again is a no-op,
different bytes are refused. ``pull`` materialises a version in a local cache keyed by
the artifact's sha256 and verifies it on the way; a version no process pulled for
``UNUSED_DAYS`` leaves the cache when another is downloaded (a loaded version holds its
towers in memory: its files are read only while loading). Each version carries a lifecycle
``state`` with a history of every change (the model-version rollout drives it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gridfs
from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from runtime.errors import Refused
from runtime.local_cache import UNUSED_DAYS, cache_dir, unused
from towers.clusters import ClusterSet
from towers.manifest import MANIFEST

if TYPE_CHECKING:
    from towers.artifact import ModelArtifact

STATES = ("published", "building", "ready", "canary", "serving", "retired", "failed")
DEFAULT_CACHE = cache_dir("models")
STAGING_HOURS = 1  # a download's staging directory left by a killed process


class RegistryError(Refused):
    """A registry operation that cannot be done, with the reason."""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    sha256: str
    state: str
    dims: int
    published_at: datetime
    manifest: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ModelRecord:
        return cls(name=document["name"], version=document["version"],
                   sha256=document["sha256"], state=document["state"],
                   dims=document["manifest"]["dims"], published_at=document["published_at"],
                   manifest=document["manifest"], history=document.get("history", []))


def parse_ref(ref: str) -> tuple[str, str]:
    """'name@version' -> (name, version), or a RegistryError saying how to write it."""
    name, at, version = ref.partition("@")
    if not (name and at and version):
        raise RegistryError(f"{ref!r} is not NAME@VERSION (e.g. two-tower@3)")
    return name, version


def _load(directory: Path, expected_sha256: str | None = None) -> ModelArtifact:
    """Imported here: torch comes with the towers, and commands that only read records
    (`esrec models status`) never load one."""
    from towers.artifact import ModelArtifact

    return ModelArtifact.load(directory, expected_sha256)


class ModelRegistry:
    def __init__(self, db: Database[dict[str, Any]], collection: str) -> None:
        self.documents = db[collection]
        self.files = gridfs.GridFSBucket(db, bucket_name=collection)  # connects lazily
        self.cluster_sets = db[f"{collection}.clusters"]

    def publish(self, directory: Path) -> ModelRecord:
        """Upload a verified artifact; idempotent for identical bytes, refused otherwise."""
        artifact = _load(directory)
        # created here, not at construction: a process must start while MongoDB is down
        self.documents.create_index([("name", ASCENDING), ("version", ASCENDING)])
        manifest = artifact.manifest
        existing = self.documents.find_one({"_id": manifest.ref})
        if existing is not None:
            return self._same_or_refuse(existing, artifact.sha256)
        files = []
        for name in [MANIFEST, *manifest.files]:
            with (directory / name).open("rb") as data:
                file_id = self.files.upload_from_stream(
                    f"{manifest.ref}/{name}", data, metadata={"model": manifest.ref})
            files.append({"name": name, "file_id": file_id})
        now = datetime.now(UTC)
        document = {
            "_id": manifest.ref, "name": manifest.name, "version": manifest.version,
            "sha256": artifact.sha256, "state": "published", "published_at": now,
            "manifest": manifest.model_dump(mode="json"), "files": files,
            "history": [{"state": "published", "at": now, "reason": "published"}],
        }
        try:
            self.documents.insert_one(document)
        except DuplicateKeyError:  # lost a race with another publisher of the same version
            for entry in files:
                self.files.delete(entry["file_id"])
            return self._same_or_refuse(self.documents.find_one({"_id": manifest.ref}) or {},
                                        artifact.sha256)
        return self.get(manifest.ref)  # as stored (BSON dates have millisecond precision)

    def _same_or_refuse(self, existing: dict[str, Any], sha256: str) -> ModelRecord:
        if existing.get("sha256") == sha256:
            return ModelRecord.from_document(existing)
        raise RegistryError(
            f"{existing.get('_id')} is already published with different bytes "
            f"(sha256 {existing.get('sha256', '?')[:12]}, yours {sha256[:12]}); published "
            "versions are immutable, publish under a new version")

    def list(self, name: str | None = None) -> list[ModelRecord]:
        query = {"name": name} if name else {}
        return [ModelRecord.from_document(d)
                for d in self.documents.find(query).sort([("name", 1), ("published_at", 1)])]

    def states(self) -> dict[str, str]:
        """ref -> state of every version, without the manifests (a follower reads this
        every interval)."""
        return {d["_id"]: d["state"] for d in self.documents.find(  # _id: the ref
            {}, {"state": 1}).sort([("name", 1), ("published_at", 1)])}

    def get(self, ref: str) -> ModelRecord:
        document = self.documents.find_one({"_id": "@".join(parse_ref(ref))})
        if document is None:
            raise RegistryError(f"{ref} is not in the registry; `esrec models list` shows what is")
        return ModelRecord.from_document(document)

    def pull(self, ref: str, cache: Path = DEFAULT_CACHE) -> ModelArtifact:
        """The artifact of ``ref``, from the local cache or downloaded into it, verified."""
        record = self.get(ref)
        target = cache / record.sha256
        if (target / MANIFEST).is_file():
            with contextlib.suppress(OSError):  # a read-only cache is only never pruned
                os.utime(target / MANIFEST)  # used: what ``prune_cache`` goes by
            return _load(target, record.sha256)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".pull-"))
        try:
            document = self.documents.find_one({"_id": "@".join(parse_ref(ref))}) or {}
            for entry in document["files"]:
                with (staging / entry["name"]).open("wb") as out:
                    self.files.download_to_stream(entry["file_id"], out)
            _load(staging, record.sha256)
            staging.rename(target)  # atomic: a half-pulled artifact is never in the cache
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        prune_cache(cache)
        return _load(target, record.sha256)

    def set_state(self, ref: str, state: str, reason: str) -> ModelRecord:
        """Move a version to ``state``, appending to its history."""
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        document = self.documents.find_one_and_update(
            {"_id": "@".join(parse_ref(ref))},
            {"$set": {"state": state},
             "$push": {"history": {"state": state, "at": datetime.now(UTC), "reason": reason}}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            raise RegistryError(f"{ref} is not in the registry")
        return ModelRecord.from_document(document)

    # -- user clusters of a version: immutable generations ---------------------------------

    def publish_clusters(self, clusters: ClusterSet) -> ClusterSet:
        """Store a generation of ``clusters.model``'s user clusters (immutable: the same
        generation with other centroids is refused, the same bytes again are a no-op)."""
        self.get(clusters.model)  # a registered version only
        self.cluster_sets.create_index([("model", ASCENDING), ("generation", ASCENDING)])
        document = {"_id": f"{clusters.model}#g{clusters.generation}",
                    **clusters.to_document(), "created_at": datetime.now(UTC)}
        try:
            self.cluster_sets.insert_one(document)
        except DuplicateKeyError:
            existing = self.cluster_sets.find_one({"_id": document["_id"]}) or {}
            if existing.get("sha256") != clusters.sha256:
                raise RegistryError(
                    f"{clusters.model} clusters generation {clusters.generation} exist with "
                    "other centroids; cluster generations are immutable") from None
        return clusters

    def clusters(self, ref: str) -> tuple[ClusterSet, datetime] | None:
        """The newest generation of ``ref``'s user clusters and when it was made, if any."""
        document = self.cluster_sets.find_one({"model": "@".join(parse_ref(ref))},
                                              sort=[("generation", -1)])
        if document is None:
            return None
        try:
            return ClusterSet.from_document(document), document["created_at"]
        except ValueError as error:
            raise RegistryError(str(error)) from None


def prune_cache(cache: Path, unused_days: float = UNUSED_DAYS) -> None:
    """Remove the pulled versions no process pulled for ``unused_days`` (by their
    manifest's time, which each pull touches), and staging directories of downloads a
    killed process left: a process following rollouts pulls a version per roll, the
    towers' size each, and would otherwise keep them all."""
    for entry in cache.iterdir():
        try:
            if unused(entry, STAGING_HOURS / 24) if entry.name.startswith(".pull-") \
                    else unused(entry / MANIFEST, unused_days):
                shutil.rmtree(entry)
        except OSError:  # not an artifact, or another process pruned it first
            continue
