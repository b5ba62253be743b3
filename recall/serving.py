"""Which index serves, and with which model version: never mix vector spaces.

A recall request resolves the serving alias to its concrete index, reads the model version
from that index's mapping ``_meta``, embeds the user with that version's user tower and
queries the concrete index, never the alias. An alias switch between the resolve and the
query therefore changes nothing for that request: the old index stays until retired.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from elasticsearch import Elasticsearch

from indexer.layout import model_of, resolve_alias
from towers.artifact import ModelArtifact
from towers.registry import ModelRegistry


class NoServingVersion(RuntimeError):
    """The serving alias points at nothing yet."""


@dataclass(frozen=True)
class ServingVersion:
    index: str
    model: str  # name@version, from the index's _meta
    artifact: ModelArtifact


class ServingResolver:
    """The serving alias, resolved at most every ``ttl_s``; towers loaded once per version."""

    def __init__(self, es: Elasticsearch, registry: ModelRegistry, alias: str,
                 ttl_s: float = 1.0) -> None:
        self.es = es
        self.registry = registry
        self.alias = alias
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._current: ServingVersion | None = None
        self._expires = 0.0
        self._artifacts: dict[str, ModelArtifact] = {}

    def current(self) -> ServingVersion:
        now = time.monotonic()
        current = self._current
        if current is not None and now < self._expires:
            return current
        with self._lock:
            if self._current is not None and time.monotonic() < self._expires:
                return self._current
            index = resolve_alias(self.es, self.alias)
            if index is None:
                raise NoServingVersion(f"the serving alias {self.alias} points at no index; "
                                       "promote a version (`esrec models roll NAME@VERSION`)")
            if self._current is None or self._current.index != index:
                self._current = self._load(index)
            self._expires = time.monotonic() + self.ttl_s
            return self._current

    def _load(self, index: str) -> ServingVersion:
        meta = model_of(self.es, index)
        model = meta["model"]
        artifact = self._artifacts.get(model)
        if artifact is None:
            artifact = self._artifacts[model] = self.registry.pull(model)
        if meta.get("artifact_sha256") not in (None, artifact.sha256):
            raise RuntimeError(f"index {index} was built by {model} sha256 "
                               f"{meta['artifact_sha256'][:12]}, the registry has "
                               f"{artifact.sha256[:12]}")
        return ServingVersion(index, model, artifact)
