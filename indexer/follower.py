"""Following the registry: which model versions a running indexer writes, re-read live.

A version is active from the moment its backfill starts (its index has a stream
position) until it is retired or fails. Every ``interval_s`` the follower re-reads the
registry and, when the set changed, hands back the new targets; the daemon (or a worker)
then restarts from the oldest position of the new set, so a new index gets every change
after its backfill's operation time while the others drop the replay as stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from elastic_transport import TransportError
from pymongo.errors import PyMongoError

from indexer.pipeline import Target

log = logging.getLogger("esrec.indexer")

ActiveIndices = Callable[[], dict[str, str]]  # ref -> index of every active version
Resolve = Callable[[str, str], Target]  # (ref, index) -> a target with its towers


class Follower:
    def __init__(self, active: ActiveIndices, resolve: Resolve, interval_s: float) -> None:
        self.active = active
        self.resolve = resolve
        self.interval_s = interval_s
        self.next_check = 0.0

    def changed(self, current: list[Target]) -> list[Target] | None:
        """The new targets if the active versions changed since ``current``, else None.
        Reads the registry at most once per interval; a failed read keeps ``current``."""
        if time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + self.interval_s
        try:
            wanted = self.active()
            have = {target.artifact.manifest.ref: target for target in current}
            if wanted == {ref: target.index for ref, target in have.items()}:
                return None
            return [have[ref] if ref in have and have[ref].index == index
                    else self.resolve(ref, index) for ref, index in wanted.items()]
        except (TransportError, PyMongoError) as error:  # keep indexing; look again later
            log.warning("cannot read the model versions", extra={"error": str(error)})
            return None

    def wait(self) -> float:
        """Seconds until the next check (an indexer with no target sleeps this long)."""
        return max(0.0, self.next_check - time.monotonic())
