"""Fixtures shared by the indexer's server tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import QUICK
from tests.indexer.helpers import RELATED_REF, related_dataset
from towers.features import Categorical, FeatureSpec, default_spec
from towers.relations import Relation
from towers.train import train


@pytest.fixture(scope="session")
def related_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose item tower reads ``category.name`` from the categories collection."""
    base = default_spec(16)
    spec = FeatureSpec(
        item=[*base.item, Categorical(name="category_name", field="category.name", dim=8,
                                      max_vocab=100)],
        user=base.user,
        relations=[Relation(collection="categories", local_field="category_id",
                            as_field="category")])
    result = train(related_dataset(), replace(QUICK, epochs=2, dims=16), spec)
    assert "Category 3" in result.featurizer.state.vocabularies["category_name"]
    directory = tmp_path_factory.mktemp("related") / "model"
    name, version = RELATED_REF.split("@")
    result.export(directory, name, version)
    return directory
