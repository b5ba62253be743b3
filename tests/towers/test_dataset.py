from __future__ import annotations

import time
from pathlib import Path

import pytest
from pymongo.database import Database

from towers.dataset import (
    Collections,
    Dataset,
    DatasetError,
    Interaction,
    behaviour,
    leave_last_out,
    load_files,
    load_mongo,
    tag_problem,
    usable_tags,
    write_jsonl,
    write_mongo,
)
from towers.synth import SynthConfig, generate

TINY = Dataset(
    items=[{"_id": "a", "tags": ["x"]}, {"_id": "b", "tags": ["x", "y"]}, {"_id": "c"}],
    users=[{"_id": "u", "country": "de"}],
    interactions=[Interaction("u", "b", 20.0), Interaction("u", "a", 10.0),
                  Interaction("u", "c", 30.0), Interaction("v", "a", 5.0)],
)


def test_leave_last_out_orders_history_and_holds_out_the_last() -> None:
    split = leave_last_out(TINY, history_len=5, validation=False)
    assert [(e.item_id, e.user["recent_items"]) for e in split.train if e.user["_id"] == "u"] == [
        ("a", []), ("b", ["a"])]
    (case,) = split.cases  # v has one interaction: nothing to hold out
    assert (case.target, case.user["recent_items"], case.seen) == ("c", ["b", "a"], {"a", "b"})
    assert case.user["tag_counts"] == {"x": 2, "y": 1}
    assert case.user["country"] == "de"
    assert split.item_counts == {"a": 2, "b": 1}
    assert split.train_end == 20.0


def test_per_user_cap_keeps_the_most_recent_examples() -> None:
    many = Dataset(items=[{"_id": str(i)} for i in range(10)], users=[],
                   interactions=[Interaction("u", str(i), float(i)) for i in range(10)])
    split = leave_last_out(many, max_examples_per_user=3)
    assert [e.item_id for e in split.train] == ["5", "6", "7"]  # 8: validation, 9: test
    assert len(leave_last_out(many).train) == 8  # no cap by default


def test_validation_is_the_second_to_last_and_never_trained_on() -> None:
    split = leave_last_out(TINY, history_len=5)
    (check,) = split.validation
    (case,) = split.cases
    assert (check.target, check.user["recent_items"], check.seen) == ("b", ["a"], {"a"})
    assert (case.target, case.user["recent_items"]) == ("c", ["b", "a"])  # history has b
    assert [e.item_id for e in split.train if e.user["_id"] == "u"] == ["a"]
    assert split.history == {"u": ["a"], "v": ["a"]}


def test_equal_times_are_ordered_by_item_id_as_in_user_state() -> None:
    same = Dataset(items=[{"_id": i} for i in "xyz"], users=[],
                   interactions=[Interaction("u", i, 7.0) for i in "zxy"])
    (case,) = leave_last_out(same, validation=False).cases
    assert case.target == "z" and case.user["recent_items"] == ["y", "x"]


def test_behaviour_counts_tags_over_the_window_only() -> None:
    tags = {"a": ["x"], "b": ["x", "y"], "c": ["z"]}
    assert behaviour(["b", "a"], tags, 50) == {
        "recent_items": ["b", "a"], "tag_counts": {"x": 2, "y": 1}}
    assert behaviour(["b", "a", "c"], tags, 2) == {  # "c" fell out of the window
        "recent_items": ["b", "a"], "tag_counts": {"x": 2, "y": 1}}


def test_usable_tags_agree_across_stages() -> None:
    item = {"tags": ["ok", "", "nul\x00", 3, "x" * 300, "fine"]}
    assert usable_tags(item) == ["ok", "fine"]
    assert usable_tags({"tags": 5}) == [] and usable_tags({}) == []
    assert tag_problem("nul\x00") and tag_problem("ok") is None


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_files_round_trip(tmp_path: Path, fmt: str) -> None:
    dataset = generate(SynthConfig(items=50, users=20, mean_interactions=5))
    write_jsonl(dataset, tmp_path)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        for stem in ("items", "users", "interactions"):
            table: pa.Table = pj.read_json(tmp_path / f"{stem}.jsonl")
            pq.write_table(table, tmp_path / f"{stem}.parquet")
            (tmp_path / f"{stem}.jsonl").unlink()
    loaded = load_files(tmp_path)
    assert loaded.interactions == dataset.interactions
    assert [i["_id"] for i in loaded.items] == [i["_id"] for i in dataset.items]
    assert leave_last_out(loaded).item_counts == leave_last_out(dataset).item_counts


def test_an_interaction_time_without_a_zone_is_utc(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "items.jsonl").write_text('{"_id": "a"}\n')
    (tmp_path / "users.jsonl").write_text('{"_id": "u"}\n')
    (tmp_path / "interactions.jsonl").write_text("".join(
        f'{{"user_id": "u", "item_id": "a", "ts": "{ts}"}}\n'
        for ts in ("2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00")))
    monkeypatch.setenv("TZ", "America/New_York")  # not the machine's local time
    time.tzset()
    try:
        loaded = load_files(tmp_path)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [i.ts for i in loaded.interactions] == [1_767_225_600.0] * 2


def test_bad_files_say_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"items\.jsonl or items\.parquet"):
        load_files(tmp_path)
    for stem in ("items", "users", "interactions"):
        (tmp_path / f"{stem}.jsonl").write_text("{}\n")
    (tmp_path / "users.jsonl").write_text('{"_id": 1}\nnot json\n')
    with pytest.raises(DatasetError, match=r"users\.jsonl:2: not JSON"):
        load_files(tmp_path)


def test_mongo_round_trip(mongo_db: Database) -> None:
    dataset = generate(SynthConfig(items=40, users=10, mean_interactions=4))
    names = Collections()
    write_mongo(dataset, mongo_db, names)
    loaded = load_mongo(mongo_db, names)
    assert sorted(loaded.interactions, key=lambda i: (i.user_id, i.ts)) == sorted(
        dataset.interactions, key=lambda i: (i.user_id, i.ts))
    assert len(loaded.items) == 40
    assert loaded.items[0]["created_at"].tzinfo is not None  # BSON dates, not strings
