"""The registry round trip through a real MongoDB (GridFS)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pymongo.database import Database

from towers.artifact import ModelArtifact
from towers.registry import ModelRegistry, RegistryError


@pytest.fixture
def registry(mongo_db: Database) -> ModelRegistry:
    return ModelRegistry(mongo_db, "models")


def test_publish_list_show_pull(registry: ModelRegistry, artifact_dir: Path,
                                tmp_path: Path, small_dataset: object) -> None:
    record = registry.publish(artifact_dir)
    assert (record.ref, record.state, record.dims) == ("test-model@1", "published", 32)
    assert [r.ref for r in registry.list()] == ["test-model@1"]
    assert registry.get("test-model@1").sha256 == ModelArtifact.load(artifact_dir).sha256

    pulled = registry.pull("test-model@1", cache=tmp_path / "cache")
    assert pulled.directory == tmp_path / "cache" / record.sha256
    original = ModelArtifact.load(artifact_dir)
    documents = [{"_id": "i1", "title": "w1x1 w1x2", "tags": ["t1-tag1"], "category": "cat1"}]
    assert np.array_equal(pulled.embed_items(documents), original.embed_items(documents))
    assert registry.pull("test-model@1", cache=tmp_path / "cache").sha256 == record.sha256


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
