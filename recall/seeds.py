"""The i2i seeds: the stored vectors of a user's newest items, kept a while per concrete
index.

A feed's users see the same hot and new items, so a request's seeds were often looked up
moments before by another request (or by the same user's previous one). A request whose
seeds are all kept makes no ``mget``: one Elasticsearch round trip fewer, and no seed
thread waking up beside the user tower (a thread handing work over cost the tower ~0.15
ms of a ~0.3 ms call on a 2-core VM, ``bench.recall``). Kept vectors are keyed by the
concrete index, so one model version's vectors never seed a search of another's
(docs/ARCHITECTURE.md, invariant 1, "Never mix vector spaces"); an item re-embedded
within ``i2i_seed_ttl_s`` seeds with its previous vector until then, and a deleted one (a
tombstone: no vector) is kept as "no seed".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.layout import VECTOR


class SeedVectors:
    def __init__(self, max_items: int, ttl_s: float) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._kept: dict[tuple[str, str], tuple[np.ndarray | None, float]] = {}
        self._lock = threading.Lock()  # requests run on many threads

    def kept(self, index: str, ids: Sequence[str]) -> tuple[dict[str, np.ndarray | None],
                                                           list[str]]:
        """The ids' kept vectors (None: the item has none), and the ids to look up."""
        now = time.monotonic()
        found: dict[str, np.ndarray | None] = {}
        missing: list[str] = []
        kept = self._kept
        for item in ids:
            entry = kept.get((index, item))
            if entry is not None and entry[1] > now:
                found[item] = entry[0]
            else:
                missing.append(item)
        return found, missing

    def keep(self, index: str, ids: Sequence[str], docs: list[dict[str, Any]]
             ) -> dict[str, np.ndarray | None]:
        """The vectors of an ``mget``'s docs for ``ids`` (None where an item was not
        found or is a tombstone), kept for ``ttl_s``; the oldest go past ``max_items``."""
        vectors: dict[str, np.ndarray | None] = dict.fromkeys(ids)
        for doc in docs:
            source = doc.get("_source") or {}
            if doc.get("found") and VECTOR in source:
                vectors[doc["_id"]] = np.asarray(source[VECTOR], np.float32)
        if self.ttl_s > 0 and self.max_items > 0:
            expires = time.monotonic() + self.ttl_s
            with self._lock:
                for item, vector in vectors.items():
                    self._kept.pop((index, item), None)  # re-inserted: the newest
                    self._kept[(index, item)] = (vector, expires)
                while len(self._kept) > self.max_items:
                    del self._kept[next(iter(self._kept))]
        return vectors
