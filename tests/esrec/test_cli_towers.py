"""`esrec towers` and `esrec models` end to end, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esrec.settings import Settings

ESREC = [sys.executable, "-m", "esrec"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESREC, *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.long
def test_synth_train_eval_publish(tmp_path: Path, settings: Settings) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    synth = _run("towers", "synth", "--out", str(data), "--items", "400", "--users", "300")
    assert synth.returncode == 0, synth.stderr
    assert json.loads(synth.stdout)["items"] == 400

    trained = _run("towers", "train", "--data", str(data), "--out", str(model), "--version",
                   "7", "--epochs", "2", "--dims", "16")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert {"model", "most_popular", "lift", "sha256"} <= set(summary)
    assert (model / "training.png").stat().st_size > 0
    assert json.loads((model / "metrics.json").read_text())["epochs"][1]["epoch"] == 2
    assert "epoch 2:" in trained.stderr  # progress, one line per epoch when not a terminal

    evaluation = _run("towers", "eval", "--artifact", str(model), "--data", str(data))
    assert evaluation.returncode == 0, evaluation.stderr
    evaluated = json.loads(evaluation.stdout)
    assert evaluated["model_version"] == "two-tower@7"
    assert evaluated["model"]["hr@100"] == summary["model"]["hr@100"]  # exported == trained
    assert set(evaluated["most_popular"]) >= {"hr@10", "recall@50", "ndcg@200"}

    again = _run("towers", "train", "--data", str(data), "--out", str(model), "--version", "8")
    assert again.returncode == 1 and "already holds an artifact" in again.stderr

    env = {**os.environ, "ESREC_MONGO__URI": settings.mongo.uri.get_secret_value(),
           "ESREC_MONGO__DATABASE": settings.mongo.database}
    published = _run("models", "publish", str(model), env=env)
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("two-tower@7 published sha256=")
    listed = _run("models", "list", env=env)
    assert listed.stdout.split()[:3] == ["two-tower@7", "published", "dims=16"]
    missing = _run("models", "show", "two-tower@99", env=env)
    assert missing.returncode == 1
    assert "two-tower@99 is not in the registry" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_missing_data_explains_how_to_make_some(tmp_path: Path) -> None:
    result = _run("towers", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                  "--version", "1")
    assert result.returncode == 1
    assert "esrec towers synth --out" in result.stderr
    assert "Traceback" not in result.stderr


def test_out_of_range_sizes_are_usage_errors(tmp_path: Path) -> None:
    result = _run("towers", "synth", "--out", str(tmp_path), "--items", "5")
    assert result.returncode == 2
    assert "--items" in result.stderr and ">=20" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_a_log_twice_and_refuse_a_mapping_that_does_not_fit(
        tmp_path: Path, settings: Settings) -> None:
    from pymongo import MongoClient

    from esrec.settings import server_environment

    (tmp_path / "log.csv").write_text("who,what,when,stars\nu1,i1,1500000000,4\n"
                                      "u1,i2,1500000060,5\nu2,i1,oops,3\nu2,i2,1500000100,2\n")
    (tmp_path / "catalog.csv").write_text("id,name,kinds\ni1,One,a|b\ni2,Two,b\n")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(
        "interactions: {path: log.csv, user: who, item: what, timestamp: when, weight: stars}\n"
        "items: {path: catalog.csv, id: id, fields: {title: {column: name},"
        " tags: {column: kinds, split: '|', type: list}}}\n")
    env = {**os.environ, **server_environment(settings)}
    for _ in range(2):  # a re-run upserts the same documents
        done = _run("towers", "import", "--config", str(mapping), "--data", str(tmp_path),
                    env=env)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["interactions"] == 3 and summary["bad_total"] == 1
        assert summary["bad_examples"] == {"log: timestamp: not a s timestamp": [3]}
    client: MongoClient = MongoClient(settings.mongo.uri.get_secret_value())
    db = client[settings.mongo.database]
    assert db.interactions.count_documents({}) == 3 and db.items.count_documents({}) == 2
    assert db.items.find_one({"_id": "i1"})["tags"] == ["a", "b"]
    client.close()

    mapping.write_text("interactions: {path: log.csv, user: nobody, item: what, "
                       "timestamp: when}\nitems: {path: catalog.csv, id: id}\n")
    refused = _run("towers", "import", "--config", str(mapping), "--data", str(tmp_path),
                   "--no-mongo", env=env)
    assert refused.returncode == 1 and "100% of the rows are bad" in refused.stderr
    assert "Traceback" not in refused.stderr
