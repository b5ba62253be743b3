"""One small trained model per test session: training is the slow part."""

from __future__ import annotations

from pathlib import Path

import pytest

from towers.artifact import ModelArtifact, export_artifact
from towers.dataset import Dataset
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, TrainResult, train

SMALL = SynthConfig(items=600, users=400, topics=10, mean_interactions=15, seed=3)
QUICK = TrainConfig(epochs=4, batch_size=256, dims=32, seed=1)


@pytest.fixture(scope="session")
def small_dataset() -> Dataset:
    return generate(SMALL)


@pytest.fixture(scope="session")
def trained(small_dataset: Dataset) -> TrainResult:
    return train(small_dataset, QUICK, progress=False)


@pytest.fixture(scope="session")
def artifact_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("artifact") / "model"
    export_artifact(trained.model, trained.featurizer, directory, "test-model", "1",
                    {"config": {"history_len": QUICK.history_len}})
    return directory


@pytest.fixture
def artifact(artifact_dir: Path) -> ModelArtifact:
    return ModelArtifact.load(artifact_dir)
