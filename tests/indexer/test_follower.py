"""Following the registry (unit, no server): new targets only when the set changes, at
most once an interval, and a failed read keeps indexing what it had."""

from __future__ import annotations

import time

from elastic_transport import ConnectionError as TransportConnectionError

from indexer.follower import Follower
from indexer.pipeline import Target
from towers.artifact import ModelArtifact


def test_new_targets_only_when_the_active_versions_change(artifact: ModelArtifact) -> None:
    ref = artifact.manifest.ref
    active: dict[str, str] = {ref: "idx-g1"}
    resolved: list[tuple[str, str]] = []

    def resolve(name: str, index: str) -> Target:
        resolved.append((name, index))
        return Target(index, artifact)

    follower = Follower(lambda: dict(active), resolve, interval_s=0.05)
    current = follower.changed([])
    assert current is not None and [t.index for t in current] == ["idx-g1"]
    assert follower.changed(current) is None  # too soon: the registry is not read
    time.sleep(0.06)
    assert follower.changed(current) is None  # read, unchanged
    active[ref] = "idx-g2"  # a resync or a rebuild moved the version to a new index
    time.sleep(0.06)
    moved = follower.changed(current)
    assert moved is not None and [t.index for t in moved] == ["idx-g2"]
    active.clear()  # retired
    time.sleep(0.06)
    assert follower.changed(moved) == []
    assert resolved == [(ref, "idx-g1"), (ref, "idx-g2")]  # towers loaded once per index


def test_a_failed_read_keeps_the_current_targets(artifact: ModelArtifact) -> None:
    def unreachable() -> dict[str, str]:
        raise TransportConnectionError("connection refused")

    follower = Follower(unreachable, lambda ref, index: Target(index, artifact), 0.0)
    assert follower.changed([Target("idx-g1", artifact)]) is None
