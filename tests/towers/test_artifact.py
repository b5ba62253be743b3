from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from towers.artifact import ModelArtifact
from towers.dataset import Dataset
from towers.manifest import ArtifactError
from towers.train import TrainResult

# Exported programs run the same kernels as the eager model on CPU; allow float32 noise.
EXPORT_TOLERANCE = 1e-5


def test_exported_towers_match_the_eager_model(artifact: ModelArtifact, trained: TrainResult,
                                               small_dataset: Dataset) -> None:
    model = trained.model.eval()
    items = small_dataset.items[:300]
    users = [case.user for case in trained.split.cases[:200]]
    with torch.no_grad():
        eager_items = model.item_tower(trained.featurizer.items(items)).numpy()
        eager_users = model.user_tower(trained.featurizer.users(users)).numpy()
    assert np.abs(artifact.embed_items(items) - eager_items).max() < EXPORT_TOLERANCE
    assert np.abs(artifact.embed_users(users) - eager_users).max() < EXPORT_TOLERANCE
    one = artifact.embed_items(items[:1])  # batch 1 works on the dynamic-batch program
    assert one.shape == (1, artifact.manifest.dims)
    assert np.allclose(np.linalg.norm(artifact.embed_items(items), axis=1), 1.0, atol=1e-5)


def test_manifest_names_the_model_and_pins_every_file(artifact: ModelArtifact) -> None:
    manifest = artifact.manifest
    assert (manifest.name, manifest.version, manifest.dims) == ("test-model", "1", 32)
    assert manifest.similarity == "dot_product"
    assert set(manifest.files) == {"item_tower.pt2", "user_tower.pt2", "vocabularies.json",
                                   "probe_queries.npy"}
    assert artifact.probe_queries is not None and artifact.probe_queries.shape[1] == 32
    assert np.allclose(np.linalg.norm(artifact.probe_queries, axis=1), 1.0, atol=1e-5)
    assert manifest.torch_version == torch.__version__
    assert len(artifact.sha256) == 64


def test_cold_start_item_gets_a_content_vector(artifact: ModelArtifact,
                                              small_dataset: Dataset) -> None:
    known = small_dataset.items[0]
    brand_new = {**known, "_id": "never-seen-before"}
    vectors = artifact.embed_items([known, brand_new, {"_id": "bare"}])
    assert np.isfinite(vectors).all()
    # same content, unseen id: closer to its twin than an empty document is
    assert vectors[1] @ vectors[0] > vectors[2] @ vectors[0]


def _copy(artifact_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact_dir, target)
    return target


def test_tampered_tower_is_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = _copy(artifact_dir, tmp_path)
    data = bytearray((copy / "item_tower.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "item_tower.pt2").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"item_tower\.pt2 is corrupt"):
        ModelArtifact.load(copy)


def test_missing_file_and_edited_manifest_are_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = _copy(artifact_dir, tmp_path)
    (copy / "vocabularies.json").unlink()
    with pytest.raises(ArtifactError, match=r"vocabularies\.json is missing"):
        ModelArtifact.load(copy)
    copy = _copy(artifact_dir, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["dims"] = 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outputs 32 dims, the manifest says 64"):
        ModelArtifact.load(copy)
    original = ModelArtifact.load(artifact_dir).sha256
    with pytest.raises(ArtifactError, match="not the expected"):
        ModelArtifact.load(copy, expected_sha256=original)
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        ModelArtifact.load(tmp_path)


def test_export_refuses_to_overwrite(trained: TrainResult, artifact_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="already holds an artifact"):
        trained.export(artifact_dir, "x", "2")


def test_the_numpy_user_tower_equals_the_exported_program(artifact: ModelArtifact,
                                                          trained: TrainResult) -> None:
    """Serving embeds users in numpy; it must compute what the exported program does."""
    from towers.artifact import _run
    from towers.numpy_tower import TOLERANCE

    assert artifact.user_numpy is not None
    users = [case.user for case in trained.split.cases[:300]] + [{}, {"country": "c1"}]
    program = _run(artifact.user_tower, artifact.featurizer.users(users))
    served = artifact.embed_users(users)
    assert np.abs(served - program).max() < TOLERANCE
    one = artifact.embed_users(users[:1])  # a request: one user
    assert np.abs(one[0] - program[0]).max() < TOLERANCE


def test_a_numpy_tower_that_disagrees_is_not_used(artifact_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import towers.numpy_tower as numpy_tower

    original = numpy_tower.NumpyTower.__call__
    monkeypatch.setattr(numpy_tower.NumpyTower, "__call__",
                        lambda self, inputs: original(self, inputs) * 1.01)
    assert ModelArtifact.load(artifact_dir).user_numpy is None  # the program serves
