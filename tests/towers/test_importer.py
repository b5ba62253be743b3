"""The importer on small files it writes itself: mapping, bad rows counted (never fatal),
duplicates collapsed, idempotent re-runs; and the MovieLens mapping on the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.ids import RULE
from towers.dataset import Collections, load_mongo, write_mongo
from towers.importer import ImportConfig, ImportConfigError, import_dataset

MOVIELENS = Path(__file__).parents[2].parent / "shared" / "datasets" / "ml-latest-small"
CONFIG = {
    "interactions": {"path": "log.csv", "user": "u", "item": "i", "timestamp": "t",
                     "weight": "r", "min_weight": 1.0},
    "items": {"path": "items.jsonl", "id": "id", "fields": {
        "title": {"column": "name"},
        "category": {"column": "genres", "split": "|", "take": "first"},
        "tags": {"column": "genres", "split": "|", "type": "list", "lower": True},
        "created_at": {"column": "name", "pattern": r"\((\d{4})\)$", "type": "date"}}},
}


def _write(directory: Path) -> Path:
    (directory / "items.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"id": 1, "name": "Alpha (1995)", "genres": "Drama|War"},
        {"id": "2", "name": "Beta", "genres": "Comedy"},
        {"id": {"nested": 1}, "name": "bad id"}]) + "\nnot json\n")
    (directory / "log.csv").write_text(
        "u,i,t,r\n"
        "a,1,100,4\n"
        "a,1,100,4\n"          # a duplicate: one interaction
        "a,2,200,0.5\n"        # below min_weight: skipped, not bad
        "b,2,not-a-time,3\n"   # bad timestamp
        "b,9,300,3\n"          # item not in the catalog
        "b,2,300,nan\n"        # bad weight
        "b\x07ad,2,300,3\n"    # bad user id (a control character)
        "b,2,400,5\n")
    config = directory / "map.yaml"
    config.write_text(json.dumps(CONFIG))
    return config


def test_import_maps_fields_and_counts_bad_rows(tmp_path: Path) -> None:
    dataset, report = import_dataset(ImportConfig.load(_write(tmp_path)), tmp_path)
    items = {item["_id"]: item for item in dataset.items}
    assert items["1"]["category"] == "Drama" and items["1"]["tags"] == ["drama", "war"]
    assert items["1"]["created_at"].year == 1995 and "created_at" not in items["2"]
    assert [(i.user_id, i.item_id, i.ts, i.weight) for i in dataset.interactions] == [
        ("a", "1", 100.0, 4.0), ("b", "2", 400.0, 5.0)]
    assert {u["_id"] for u in dataset.users} == {"a", "b"}
    assert report.bad == {"items: id: missing or not an id": 2,
                          "log: timestamp: not a s timestamp": 1,
                          "log: r: not a finite number": 1,
                          f"log: u: {RULE}": 1}
    assert report.examples["log: timestamp: not a s timestamp"] == [4]
    assert report.skipped["log: weight below min_weight"] == 1
    assert report.skipped["log: duplicate interaction"] == 1
    assert report.skipped["log: item not in the catalog"] == 1
    assert report.worst_bad_ratio() == ("items", 0.5)


def test_a_broken_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("interactions: {path: x.csv}\nitems: {path: y.csv, id: id}\n")
    with pytest.raises(ImportConfigError, match=r"interactions\.user: Field required"):
        ImportConfig.load(path)


def test_reimporting_into_mongodb_is_idempotent(tmp_path: Path, mongo_db) -> None:  # type: ignore[no-untyped-def]
    config = ImportConfig.load(_write(tmp_path))
    for _ in range(2):
        dataset, _report = import_dataset(config, tmp_path)
        write_mongo(dataset, mongo_db, Collections(), replace=False)
    stored = load_mongo(mongo_db, Collections())
    assert len(stored.items) == 2 and len(stored.interactions) == 2
    assert sorted(i.key for i in stored.interactions) == sorted(
        i.key for i in dataset.interactions)


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason="shared/ MovieLens not present")
def test_the_movielens_mapping_reads_the_real_files() -> None:
    config = ImportConfig.load(Path(__file__).parents[2] / "bench" / "movielens.yaml")
    dataset, report = import_dataset(config, MOVIELENS)
    assert report.as_dict()["bad_total"] == 0
    assert len(dataset.items) > 9000 and len(dataset.interactions) > 99_000
    toy = next(item for item in dataset.items if item["_id"] == "1")
    assert toy["category"] == "Adventure" and "animation" in toy["tags"]
    assert toy["created_at"].year == 1995
