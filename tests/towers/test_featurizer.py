"""The featurizer on messy documents: never raises, falls back, counts."""

from __future__ import annotations

import math
import time
import zlib
from datetime import UTC, datetime

import torch
from pytest import MonkeyPatch

from towers.features import OOV, PAD, Age, FeatureSpec, ItemId, Numeric, Tags, Text, default_spec
from towers.featurizer import EXAMPLE_AGE, NUMERIC, Featurizer

ITEMS = [
    {"_id": "a", "title": "Red Shoes", "category": "shoes", "tags": ["red", "sport"],
     "price": 50.0},
    {"_id": "b", "title": "Blue hat", "category": "hats", "tags": ["blue"], "price": 20},
    {"_id": "c", "title": "red hat", "category": "hats", "tags": ["red"], "price": 10.0},
]
USERS = [{"_id": "u1", "country": "de", "age": 30, "signup_at": "2025-01-01T00:00:00+00:00"}]


def fitted() -> Featurizer:
    return Featurizer.fit(default_spec(), ITEMS, USERS, {"a": 5, "b": 2, "c": 1},
                          now=datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_vocabularies_are_frequency_ordered_and_min_count_applies() -> None:
    featurizer = fitted()
    assert featurizer.state.vocabularies["item_id"] == ["a", "b"]  # c seen once < min_count 2
    assert featurizer.state.vocabularies["tags"][0] == "red"  # most frequent first
    assert featurizer.state.vocabularies["category"] == ["hats", "shoes"]


def test_clean_items_become_indices() -> None:
    featurizer = fitted()
    tensors = featurizer.items(ITEMS)
    assert tensors["item_id"].tolist() == [2, 3, OOV]  # c: an unseen id shares the OOV bucket
    assert tensors["category"].tolist() == [3, 2, 2]
    assert tensors["item_tags"].shape == (3, 16)
    tags = featurizer._index["tags"]
    assert tensors["item_tags"][0, :3].tolist() == [tags["red"], tags["sport"], PAD]
    assert tensors[NUMERIC].shape == (3, 1)
    assert abs(float(tensors[NUMERIC].mean())) < 1e-5  # standardised on the fitted data
    assert not featurizer.fallbacks


def test_messy_documents_fall_back_and_are_counted() -> None:
    featurizer = fitted()
    messy = [
        {},  # everything missing
        {"_id": {"nested": 1}, "category": ["not", "a", "string"], "tags": "red",
         "title": 42, "price": "12.5"},  # every field mistyped
        {"_id": "a", "price": math.nan, "tags": [None, True, "red", {"x": 1}]},
        {"_id": "a", "price": math.inf, "tags": [f"t{i}" for i in range(100)]},  # oversized
        {"_id": True, "category": 3.5, "price": True, "title": None},
    ]
    tensors = featurizer.items(messy)
    assert tensors["item_id"].tolist() == [PAD, PAD, 2, 2, PAD]
    assert tensors["category"].tolist() == [PAD] * 5
    assert torch.isfinite(tensors[NUMERIC]).all()
    assert tensors[NUMERIC][:, 0].tolist() == [0.0] * 5  # the fitted mean
    assert tensors["item_tags"][2, 0].item() == featurizer._index["tags"]["red"]
    assert (tensors["item_tags"][3] == OOV).all()  # unknown tags, truncated to max_len
    f = featurizer.fallbacks
    assert f[("item_id", "missing")] == 1 and f[("item_id", "mistyped")] == 2
    assert f[("price", "mistyped")] == 4  # a string, NaN, inf, a bool
    assert f[("item_tags", "mistyped")] == 1 and f[("item_tags", "truncated")] == 1
    assert f[("title", "mistyped")] == 1


def test_users_behaviour_and_example_age() -> None:
    featurizer = fitted()
    user = {**USERS[0], "recent_items": ["b", "a", "zzz"], "tag_counts": {"red": 3, "blue": 1,
                                                                          "bad": "x"}}
    tensors = featurizer.users([user, {"recent_items": "oops", "tag_counts": [1]}])
    assert tensors["recent_items"][0, :3].tolist() == [3, 2, OOV]
    assert tensors["recent_tags"][0, :2].tolist() == [featurizer._index["tags"]["red"],
                                                     featurizer._index["tags"]["blue"]]
    assert tensors["recent_tags_weights"][0, :3].tolist() == [3.0, 1.0, 0.0]
    assert tensors["recent_items"][1].tolist() == [PAD] * 50
    assert tensors[EXAMPLE_AGE].tolist() == [[0.0], [0.0]]  # serving: example age 0
    aged = featurizer.users([user], example_age_days=[2.5])
    assert aged[EXAMPLE_AGE].tolist() == [[2.5]]


def test_age_accepts_datetimes_iso_strings_and_epochs(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # a zone-less date is UTC, not local time
    time.tzset()
    spec = FeatureSpec(item=[Age(name="age", field="at")], user=[])
    at = datetime(2026, 1, 11, tzinfo=UTC).timestamp()
    documents = [{"at": datetime(2026, 1, 1, tzinfo=UTC)}, {"at": "2026-01-01T00:00:00+00:00"},
                 {"at": datetime(2026, 1, 1, tzinfo=UTC).timestamp()},
                 {"at": datetime(2026, 1, 1)},  # as esrec decodes BSON dates: naive, UTC
                 {"at": "2026-01-01T00:00:00"}]
    try:
        featurizer = Featurizer.fit(spec, documents, [], {}, now=at)
        values = featurizer.items(documents, at=at)[NUMERIC][:, 0].tolist()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert len(set(values)) == 1
    assert featurizer.state.numeric["age"].mean == math.log1p(10.0)


def test_hashing_is_stable_across_processes() -> None:
    spec = FeatureSpec(item=[Text(name="title", field="title", hash_buckets=1000, max_len=4)],
                       user=[])
    featurizer = Featurizer.fit(spec, [], [], {})
    ids = featurizer.items([{"title": "Red red HAT!"}])["title"][0].tolist()
    assert ids[0] == ids[1] != ids[2] and ids[3] == PAD
    assert ids[0] == 2 + zlib.crc32(b"red") % 1000  # crc32, not Python's salted hash()
    again = Featurizer.fit(spec, [], [], {}).items([{"title": "red"}])["title"][0, 0].item()
    assert again == ids[0]


def test_dotted_fields_reach_into_subdocuments() -> None:
    spec = FeatureSpec(item=[Numeric(name="views", field="stats.views"),
                             ItemId(name="id", field="_id", max_vocab=10, min_count=1),
                             Tags(name="t", field="meta.tags", hash_buckets=50)], user=[])
    featurizer = Featurizer.fit(spec, [{"stats": {"views": 4}}, {"stats": {"views": 6}}], [], {})
    tensors = featurizer.items([{"stats": {"views": 6}, "meta": {"tags": ["x"]}},
                                {"stats": 5}])
    assert tensors[NUMERIC][:, 0].tolist() == [1.0, 0.0]
    assert tensors["t"][0, 0].item() >= 2
    assert featurizer.fallbacks[("views", "missing")] == 1
