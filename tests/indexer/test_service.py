"""Which versions an indexer writes (indexer/service.py ``active_indices``), read in three
requests however many versions there are."""

from __future__ import annotations

from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.changes import Position
from indexer.layout import AliasError, version_alias
from tests.indexer.helpers import services

pytestmark = pytest.mark.slow
V1, V2 = "test-model@1", "test-model@2"


def test_active_versions_are_live_aliased_and_started(settings: Settings, es: Elasticsearch,
                                                      artifact_dir: Path, v2_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    svc.registry.publish(v2_dir)
    assert svc.active_indices() == {}  # published, no index yet
    v1 = svc.new_generation(V1, point_alias=True).index
    v2 = svc.new_generation(V2, point_alias=True).index
    assert svc.active_indices() == {}  # indices, but no backfill started: no position
    svc.checkpoints.save(v1, Position(None, None, 0))
    assert svc.active_indices() == {V1: v1}
    svc.checkpoints.save(v2, Position(None, None, 0))
    assert svc.active_indices() == {V1: v1, V2: v2}
    # an alias of the prefix esrec does not own, over two indices, changes nothing
    stray = f"{settings.index.prefix}-stray"
    for name in (f"{stray}-a", f"{stray}-b"):
        es.indices.create(index=name)
        es.indices.put_alias(index=name, name=stray)
    svc.registry.set_state(V2, "retired", "test")
    assert svc.active_indices() == {V1: v1}
    # a version's alias over two indices is refused, as every alias read is
    es.indices.put_alias(index=v2, name=version_alias(settings.index.prefix, "test-model", "1"))
    with pytest.raises(AliasError, match="points at 2 indices"):
        svc.active_indices()
