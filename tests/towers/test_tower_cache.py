"""The towers rebuilt from kept weights (towers/tower_cache.py): the same vectors as the
exported program, the program loaded only when nothing checked is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from towers import tower_cache
from towers.artifact import ModelArtifact, _run
from towers.dataset import Dataset
from towers.train import TrainResult


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "towers"
    monkeypatch.setattr(tower_cache, "CACHE", root)
    return root


def _program_vectors(artifact_dir: Path, artifact: ModelArtifact, items: list[dict],
                     users: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    item = torch.export.load(artifact_dir / "item_tower.pt2").module()
    user = torch.export.load(artifact_dir / "user_tower.pt2").module()
    return (_run(item, artifact.featurizer.items(items, at=1e9)),
            _run(user, artifact.featurizer.users(users, at=[1e9] * len(users))))


def _forbid_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the exported program was loaded")

    monkeypatch.setattr(torch.export, "load", refuse)


def test_the_second_load_builds_the_towers_from_kept_weights(
        artifact_dir: Path, cache: Path, small_dataset: Dataset, trained: TrainResult,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = ModelArtifact.load(artifact_dir)
    kept = tower_cache.cache_path(first.sha256)
    assert kept.is_file() and kept.with_name(kept.name + ".sha256").is_file()
    items = small_dataset.items[:200]
    users = [case.user for case in trained.split.cases[:100]] + [{}]
    expected_items, expected_users = _program_vectors(artifact_dir, first, items, users)
    _forbid_the_program(monkeypatch)
    second = ModelArtifact.load(artifact_dir)
    served_items = _run(second.item_tower, second.featurizer.items(items, at=1e9))
    served_users = second.embed_users(users, at=[1e9] * len(users))
    assert np.abs(served_items - expected_items).max() < tower_cache.TOLERANCE
    assert np.abs(served_users - expected_users).max() < tower_cache.TOLERANCE
    assert second.user_numpy is not None


def test_kept_weights_that_changed_on_disk_are_checked_again(
        artifact_dir: Path, cache: Path, small_dataset: Dataset) -> None:
    sha256 = ModelArtifact.load(artifact_dir).sha256
    kept = tower_cache.cache_path(sha256)
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit inside one table
    kept.write_bytes(bytes(data))
    again = ModelArtifact.load(artifact_dir)  # from the program, and kept afresh
    assert tower_cache.read(kept) is not None
    items = small_dataset.items[:50]
    expected, _ = _program_vectors(artifact_dir, again, items, [])
    assert np.abs(_run(again.item_tower, again.featurizer.items(items, at=1e9))
                  - expected).max() < tower_cache.TOLERANCE


def test_a_model_that_does_not_compute_the_program_is_never_kept(
        artifact_dir: Path, cache: Path, small_dataset: Dataset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rebuild = tower_cache.rebuild

    def scaled(spec, side, weights):  # type: ignore[no-untyped-def]
        tower = rebuild(spec, side, weights)
        tower.mlp[2].bias.data += 0.5  # as if towers.model's forward had changed
        return tower

    monkeypatch.setattr(tower_cache, "rebuild", scaled)
    artifact = ModelArtifact.load(artifact_dir)
    assert not tower_cache.cache_path(artifact.sha256).exists()
    items = small_dataset.items[:50]
    expected, _ = _program_vectors(artifact_dir, artifact, items, [])
    assert np.abs(_run(artifact.item_tower, artifact.featurizer.items(items, at=1e9))
                  - expected).max() < tower_cache.TOLERANCE  # the program serves


def test_a_cache_that_cannot_be_written_only_costs_the_next_start(
        artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        small_dataset: Dataset) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr(tower_cache, "CACHE", blocker / "towers")
    artifact = ModelArtifact.load(artifact_dir)
    assert artifact.embed_items(small_dataset.items[:3]).shape == (3, artifact.manifest.dims)
    assert not (blocker / "towers").exists()


def test_weights_no_start_read_for_a_month_go_when_others_are_kept(
        artifact_dir: Path, cache: Path) -> None:
    cache.mkdir(parents=True)
    stale, recent = cache / "old-version.npz", cache / "recent-version.npz"
    for kept in (stale, recent):
        kept.write_bytes(b"x")
        kept.with_name(kept.name + ".sha256").write_text("x")
    month_ago = time.time() - 31 * 86400
    os.utime(stale, (month_ago, month_ago))
    ModelArtifact.load(artifact_dir)  # keeps this version's weights, then prunes
    assert not stale.exists() and not stale.with_name(stale.name + ".sha256").exists()
    assert recent.exists()
    assert len(list(cache.glob("*.npz"))) == 2
