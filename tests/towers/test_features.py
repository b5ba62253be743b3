from __future__ import annotations

import pytest
from pydantic import ValidationError

from towers.features import Categorical, FeatureSpec, Numeric, Tags, default_spec


def test_default_spec_round_trips_as_json() -> None:
    spec = default_spec()
    assert FeatureSpec.model_validate_json(spec.model_dump_json()) == spec


def test_vocab_xor_hash() -> None:
    with pytest.raises(ValidationError, match="exactly one of max_vocab or hash_buckets"):
        Categorical(name="c", field="c", max_vocab=10, hash_buckets=10)
    with pytest.raises(ValidationError, match="exactly one of max_vocab or hash_buckets"):
        Categorical(name="c", field="c")


def test_shared_tables_must_agree() -> None:
    with pytest.raises(ValidationError, match="sharing table 'tags'"):
        FeatureSpec(item=[Tags(name="a", field="tags", table="tags", dim=8, max_vocab=10)],
                    user=[Tags(name="b", field="t", table="tags", dim=16, max_vocab=10)])


def test_feature_names_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        FeatureSpec(item=[Numeric(name="x", field="a")], user=[Numeric(name="x", field="b")])
