"""Which index serves, and with which model version: never mix vector spaces.

A recall request resolves the serving alias to its concrete index, reads the model version
from that index's mapping ``_meta``, embeds the user with that version's user tower and
queries the concrete index, never the alias. An alias switch between the resolve and the
query therefore changes nothing for that request: the old index stays until retired.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from elasticsearch import Elasticsearch

from indexer.layout import model_of, resolve_alias
from runtime.errors import Refused, Unavailable
from towers.artifact import ModelArtifact
from towers.registry import ModelRegistry

log = logging.getLogger("esrec.recall")


class NoServingVersion(Unavailable):
    """The serving alias points at nothing yet."""


class ServingUnavailable(Unavailable):
    """The serving index's model version cannot be loaded (missing, corrupt, not the
    artifact that built the index): recall answers 503 until it can."""


@dataclass(frozen=True)
class ServingVersion:
    index: str
    model: str  # name@version, from the index's _meta
    artifact: ModelArtifact


class ServingResolver:
    """The serving alias, re-resolved every ``ttl_s``; towers loaded once per version.

    Only the first call waits for Elasticsearch. After that an expired entry is still
    answered at once while one background refresh looks the alias up (stale while
    revalidate), so no request pays for the lookup and a slow cluster cannot stall
    every request once a second. A failed refresh keeps the last version and retries on
    the next expired call.
    """

    def __init__(self, es: Elasticsearch, registry: ModelRegistry, alias: str,
                 ttl_s: float = 1.0) -> None:
        self.es = es
        self.registry = registry
        self.alias = alias
        self.ttl_s = ttl_s
        self._lock = threading.Lock()  # one lookup at a time
        self._claim = threading.Lock()  # guards _refreshing
        self._current: ServingVersion | None = None
        self._expires = 0.0
        self._refreshing = False
        self._artifacts: dict[str, ModelArtifact] = {}

    def current(self) -> ServingVersion:
        current = self._current
        if current is None:
            with self._lock:
                return self._current or self._refresh()
        if time.monotonic() >= self._expires and self._claim_refresh():
            threading.Thread(target=self._refresh_in_background, daemon=True,
                             name="esrec-serving-alias").start()
        return current

    def _claim_refresh(self) -> bool:
        """True for the one caller that starts the refresh (never held during I/O)."""
        with self._claim:
            if self._refreshing:
                return False
            self._refreshing = True
            return True

    def _refresh_in_background(self) -> None:
        try:
            with self._lock:
                self._refresh()
        except Exception as error:  # keep serving the last version; the next call retries
            log.warning("cannot re-resolve the serving alias", extra={
                "alias": self.alias, "error": repr(error)})
        finally:
            self._refreshing = False

    def _refresh(self) -> ServingVersion:
        """Look the alias up (caller holds the lock) and load a new version's towers."""
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
        model = meta.get("model")
        if not model:
            raise ServingUnavailable(f"index {index} names no model version in its _meta")
        artifact = self._artifacts.get(model)
        if artifact is None:
            try:
                artifact = self._artifacts[model] = self.registry.pull(model)
            except Refused as error:  # missing from the registry, corrupt, unloadable
                raise ServingUnavailable(f"cannot load {model} for {index}: {error}") from None
        if meta.get("artifact_sha256") not in (None, artifact.sha256):
            raise ServingUnavailable(f"index {index} was built by {model} sha256 "
                                     f"{meta['artifact_sha256'][:12]}, the registry has "
                                     f"{artifact.sha256[:12]}")
        return ServingVersion(index, model, artifact)
