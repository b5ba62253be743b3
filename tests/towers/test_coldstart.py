"""Cold start of items the model never learned by id: the neighbours' mean, carried in
the artifact so every path computes the same vector, and the held-out measurement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUICK, SMALL
from towers.artifact import ModelArtifact, export_artifact
from towers.coldstart import ColdStart, KnownItems
from towers.dataset import Dataset
from towers.holdout import choose_cold_start, measure_items
from towers.manifest import ArtifactError
from towers.synth import generate
from towers.train import TrainResult


def _unit(rows: list[list[float]]) -> np.ndarray:
    matrix = np.asarray(rows, np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_the_neighbours_mean_is_of_the_nearest_known_items_by_content() -> None:
    known = KnownItems(content=_unit([[1, 0], [0.9, 0.1], [0, 1]]),
                       full=_unit([[1, 1], [1, 0.5], [-1, 0]]))
    averaged = known.average(_unit([[1, 0.05]]), k=2)
    expected = _unit([[1, 1]])[0] + _unit([[1, 0.5]])[0]
    assert np.allclose(averaged[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(known.average(_unit([[0, 1]]), k=1)[0], [-1, 0])


def test_a_neighbours_version_embeds_unknown_items_from_known_ones(
        trained: TrainResult, small_dataset: Dataset, tmp_path: Path) -> None:
    cold = ColdStart(items="neighbours", k=3)
    artifact = trained.export(tmp_path / "n", "cold", "1", cold_start=cold)
    assert "known_items.npz" in artifact.manifest.files
    again = ModelArtifact.load(tmp_path / "n")
    assert again.manifest.cold_start == cold
    known_doc = small_dataset.items[0]
    new_doc = {**known_doc, "_id": "never-seen-before"}
    known_vector, new_vector = again.embed_items([known_doc, new_doc])
    content = trained.export(tmp_path / "c", "cold", "2")  # the default: content-only
    assert known_vector == pytest.approx(content.embed_items([known_doc])[0], abs=1e-5)
    raw = content.embed_items([new_doc])
    assert again.known_items is not None
    assert np.allclose(new_vector, again.known_items.average(raw, 3)[0], atol=1e-5)
    assert not np.allclose(new_vector, raw[0], atol=1e-3)  # not the content vector


def test_a_neighbours_manifest_without_its_file_is_refused(trained: TrainResult,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="needs the known items"):
        export_artifact(trained.model, trained.featurizer, tmp_path / "x", "cold", "1", {},
                        cold_start=ColdStart(items="neighbours"))


def test_held_out_new_items_are_measured_and_the_best_method_chosen() -> None:
    dataset = generate(SMALL)
    figures = measure_items(dataset, QUICK, share=0.1, neighbours=(3,), max_cases=300)
    assert figures["new_items"] == 60 and figures["known_items"] > 0
    for name in ("content", "neighbours_3"):
        assert figures[name]["cases"] > 50 and 0 <= figures[name]["hr@100"] <= 1
    chosen = choose_cold_start(dataset, QUICK)
    assert set(chosen.measured) == {"content", "neighbours_5", "neighbours_10",
                                    "neighbours_20"}
    best = max(chosen.measured.values())
    winner = "content" if chosen.items == "content" else f"neighbours_{chosen.k}"
    assert chosen.measured[winner] == best
