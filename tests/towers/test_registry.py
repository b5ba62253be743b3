"""The registry round trip through a real MongoDB (GridFS)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from pymongo.database import Database

from towers.artifact import ModelArtifact
from towers.manifest import MANIFEST
from towers.registry import ModelRegistry, RegistryError, prune_cache


@pytest.fixture
def registry(mongo_db: Database) -> ModelRegistry:
    return ModelRegistry(mongo_db, "models")


def test_publish_list_show_pull(registry: ModelRegistry, artifact_dir: Path,
                                tmp_path: Path, small_dataset: object) -> None:
    record = registry.publish(artifact_dir)
    assert (record.ref, record.state, record.dims) == ("test-model@1", "published", 32)
    assert [r.ref for r in registry.list()] == ["test-model@1"]
    assert registry.get("test-model@1").sha256 == ModelArtifact.load(artifact_dir).sha256

    old = _version_dir(tmp_path / "cache", "0" * 64, days_unused=31)  # pulled long ago
    pulled = registry.pull("test-model@1", cache=tmp_path / "cache")
    assert pulled.directory == tmp_path / "cache" / record.sha256
    assert not old.exists()  # a download prunes the versions nobody pulled for 30 days
    original = ModelArtifact.load(artifact_dir)
    documents = [{"_id": "i1", "title": "w1x1 w1x2", "tags": ["t1-tag1"], "category": "cat1"}]
    assert np.array_equal(pulled.embed_items(documents), original.embed_items(documents))
    then = time.time() - 31 * 86400
    os.utime(pulled.directory / MANIFEST, (then, then))
    assert registry.pull("test-model@1", cache=tmp_path / "cache").sha256 == record.sha256
    assert (pulled.directory / MANIFEST).stat().st_mtime > then + 86400  # used again


def test_republishing_identical_bytes_is_a_no_op(registry: ModelRegistry,
                                                 artifact_dir: Path) -> None:
    first = registry.publish(artifact_dir)
    assert registry.publish(artifact_dir) == first
    assert len(registry.list()) == 1


def test_same_version_with_different_bytes_is_refused(registry: ModelRegistry,
                                                      artifact_dir: Path, tmp_path: Path) -> None:
    registry.publish(artifact_dir)
    changed = tmp_path / "changed"
    shutil.copytree(artifact_dir, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["training"]["note"] = "retrained"
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="already published with different bytes"):
        registry.publish(changed)


def test_state_changes_are_kept_in_history(registry: ModelRegistry, artifact_dir: Path) -> None:
    registry.publish(artifact_dir)
    record = registry.set_state("test-model@1", "building", "backfill started")
    assert record.state == "building"
    assert [h["state"] for h in record.history] == ["published", "building"]
    with pytest.raises(RegistryError, match="unknown state"):
        registry.set_state("test-model@1", "bogus", "x")
    with pytest.raises(RegistryError, match="not NAME@VERSION"):
        registry.get("no-version")
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.get("ghost@9")


def _version_dir(cache: Path, name: str, days_unused: float) -> Path:
    """A pulled version whose manifest was last touched ``days_unused`` days ago."""
    directory = cache / name
    directory.mkdir(parents=True)
    (directory / MANIFEST).write_text("{}")
    (directory / "item_tower.pt2").write_bytes(b"x" * 10)
    then = time.time() - days_unused * 86400
    os.utime(directory / MANIFEST, (then, then))
    return directory


def test_the_cache_keeps_what_was_pulled_lately_and_drops_killed_downloads(
        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old, recent = _version_dir(cache, "a" * 64, 31), _version_dir(cache, "b" * 64, 29)
    killed, running = cache / ".pull-killed", cache / ".pull-running"
    for staging in (killed, running):
        staging.mkdir()
    then = time.time() - 2 * 3600
    os.utime(killed, (then, then))
    (cache / "not-an-artifact").mkdir()
    prune_cache(cache)
    assert sorted(path.name for path in cache.iterdir()) == sorted(
        [recent.name, running.name, "not-an-artifact"])
    assert not old.exists() and not killed.exists()
