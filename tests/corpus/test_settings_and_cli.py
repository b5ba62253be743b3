"""Bad settings, config files and command-line arguments: each ends the command with one
plain line per problem that names the setting (or option) and the fix, and the exit code
of its kind (2 settings/usage, 1 refused, 3 a server unavailable); never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from esrec.cli import main
from esrec.ports import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ESREC_"):
            monkeypatch.delenv(name)


def _run(args: list[str], env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, env, result.output)  # an exception escaping the CLI is a traceback
    assert "Traceback" not in result.output
    return result


SETTINGS: list[tuple[dict[str, str], str]] = [
    ({"ESREC_ES__HOSTS": "localhost:9200"}, "ESREC_ES__HOSTS"),
    ({"ESREC_ES__HOSTS": "u:secret@h:9200"}, "ESREC_ES__HOSTS"),
    ({"ESREC_MONGO__URI": "postgres://x"}, "must start with mongodb://"),
    ({"ESREC_KAFKA__BOOTSTRAP_SERVERS": "kafka"}, "is not host:port"),
    ({"ESREC_INDEX__PREFIX": "Bad Prefix"}, "not a valid Elasticsearch name"),
    ({"ESREC_INDEXER__BATCH_MAX_DOCS": "0"}, "ESREC_INDEXER__BATCH_MAX_DOCS"),
    ({"ESREC_INDEXER__BATCH_MAX_DOCS": "lots"}, "valid integer"),
    ({"ESREC_INDEXER__METRICS_PORT": "70000"}, "ESREC_INDEXER__METRICS_PORT"),
    ({"ESREC_INDEXER__INDEX_OPTIONS": "flat"}, "'auto', 'hnsw' or 'int8_hnsw'"),
    ({"ESREC_INDEXER__PROJECTION": '{"title": "blob"}'}, "ESREC_INDEXER__PROJECTION"),
    ({"ESREC_INDEXER__PROJECTION": "{bad"}, "ESREC_INDEXER__PROJECTION: not valid JSON"),
    ({"ESREC_RECALL__CHANNELS": '{"knn": {weight: 1}'}, "ESREC_RECALL__CHANNELS: not valid"),
    ({"ESREC_RECALL__CHANNELS": '{"knn": {"weight": -1}}'}, "ESREC_RECALL__CHANNELS"),
    ({"ESREC_RECALL__FUSION": "best"}, "ESREC_RECALL__FUSION"),
    ({"ESREC_KAFKA__TOPICS__DEAD_LETTERS": "bad topic"}, "is not a Kafka topic name"),
    ({"ESREC_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"ESREC_ES__USERNAME": "elastic"}, "needs both username and password"),
    ({"ESREC_ES__TYPO": "1"}, "unknown setting"),
]


@pytest.mark.parametrize(("env", "says"), SETTINGS)
def test_bad_settings_exit_2_naming_the_variable(env: dict[str, str], says: str) -> None:
    result = _run(["config", "show"], env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "esrec: invalid settings" and says in result.stderr, result.stderr
    assert "secret" not in result.output  # a bad URL is masked too


@pytest.mark.parametrize(("name", "content", "says"), [
    ("missing.toml", None, "does not exist"),
    ("esrec.ini", "x = 1", "must end in .toml, .yaml or .yml"),
    ("broken.toml", "[es\nhosts = ", "cannot read settings"),
    ("broken.yaml", "es: [unclosed", "cannot read settings"),
    ("typo.yaml", "es:\n  hostz: [http://x:9200]\n", "es.hostz: unknown setting"),
])
def test_bad_config_files_exit_2(tmp_path: Path, name: str, content: str | None,
                                 says: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = _run(["--config", str(path), "config", "show"])
    assert result.exit_code == 2 and says in result.stderr, result.output


def test_recall_settings_that_name_unknown_channels_or_fields_exit_2() -> None:
    for env, says in [({"ESREC_RECALL__CHANNELS": '{"nope": {}}'}, "unknown channel"),
                      ({"ESREC_RECALL__FILTER_FIELDS": '{"title": "range"}'},
                       "recall.filter_fields.title")]:
        result = _run(["recall", "query", "u1"], env)
        assert result.exit_code == 2 and says in result.stderr, result.output


@pytest.mark.parametrize(("args", "code", "says"), [
    (["stack", "up", "--es-port", "-1"], 2, "Invalid value for '--es-port'"),
    (["towers", "synth"], 2, "--out DIR and/or --to-mongo"),
    (["towers", "train", "--out", "x", "--version", "1", "--epochs", "0"], 2, "--epochs"),
    (["towers", "eval", "--artifact", "/nonexistent"], 2, "does not exist"),
    (["indexer", "run", "--metrics-port", "70000"], 2, "--metrics-port"),
    (["models", "retire", "m@1", "--grace-s", "-5"], 2, "--grace-s"),
    (["demo", "--items", "5"], 2, "--items"),
    (["nope"], 2, "No such command"),
    (["indexer", "backfill", "notaref"], 1, "'notaref' is not NAME@VERSION"),
    (["models", "show", "@"], 1, "is not NAME@VERSION"),
    (["recall", "query", "u\t1"], 1, "user_id: Value error, an id is 1 to 512 UTF-8 bytes"),
])
def test_bad_arguments_say_what_to_fix(args: list[str], code: int, says: str,
                                       tmp_path: Path) -> None:
    result = _run(args, {"ESREC_MONGO__SERVER_SELECTION_TIMEOUT_MS": "300"})
    assert result.exit_code == code and says in result.output, result.output
    assert not (Path(".esrec") / "stack" / "elasticsearch.json").exists()  # nothing started


def test_refusals_and_missing_files_name_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(["towers", "eval", "--artifact", str(empty)])
    assert result.exit_code == 1 and "is not a model artifact" in result.stderr
    result = _run(["models", "publish", str(empty)])
    assert result.exit_code == 1 and "is not a model artifact" in result.stderr
    result = _run(["towers", "train", "--data", str(empty), "--out", str(tmp_path / "m"),
                   "--version", "1"])
    assert result.exit_code == 1 and "towers synth --out" in result.stderr


def test_data_the_towers_cannot_use_is_refused_with_the_fix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run(["towers", "synth", "--out", str(data), "--items", "40",
                 "--users", "20"]).exit_code == 0
    interactions = (data / "interactions.jsonl").read_text().splitlines()
    (data / "interactions.jsonl").write_text("\n".join(
        json.dumps({**json.loads(line), "item_id": f"unknown-{n}"})
        for n, line in enumerate(interactions)) + "\n")
    train = ["towers", "train", "--data", str(data), "--out", str(tmp_path / "m"),
             "--version", "1", "--epochs", "1"]
    result = _run(train)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[0] == (
        "esrec: no training example refers to an item in the catalog")
    assert "what to do: the interactions' item ids must be the items' _id texts" in (
        result.stderr)
    (data / "items.jsonl").write_text('{"_id": "a"}\n{"_id": \n')
    result = _run(train)
    assert result.exit_code == 1 and "items.jsonl:2: not JSON" in result.stderr
    assert "what to do: fix that line" in result.stderr


def test_servers_that_do_not_answer_exit_3_in_one_line() -> None:
    dead = free_port()
    for args, env, says in [
        (["models", "list"], {"ESREC_MONGO__URI": f"mongodb://127.0.0.1:{dead}/",
                              "ESREC_MONGO__SERVER_SELECTION_TIMEOUT_MS": "300"},
         "MongoDB is unreachable"),
        (["models", "status"], {"ESREC_ES__HOSTS": f"http://127.0.0.1:{dead}",
                                "ESREC_MONGO__URI": f"mongodb://127.0.0.1:{dead}/",
                                "ESREC_MONGO__SERVER_SELECTION_TIMEOUT_MS": "300"},
         "is unreachable"),
    ]:
        result = _run(args, env)
        assert result.exit_code == 3 and says in result.stderr, result.output
        assert "what to do: check ESREC_" in result.stderr


def test_the_real_console_script_shows_no_traceback() -> None:
    run = subprocess.run([sys.executable, "-m", "esrec", "config", "show"],
                         env={**os.environ, "ESREC_RECALL__CHANNELS": "{"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "ESREC_RECALL__CHANNELS: not valid JSON" in run.stderr
    assert "Traceback" not in run.stderr
