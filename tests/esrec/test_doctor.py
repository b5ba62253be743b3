"""`esrec doctor` against healthy servers, wrong URLs and a standalone mongod."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from esrec.doctor import check_elasticsearch, check_mongodb, run_checks
from esrec.settings import Settings
from esrec.stack import SERVICES, _wait_gone, free_port
from runtime.settings import MASK


def test_healthy_servers_pass(settings: Settings) -> None:
    results = run_checks(settings)
    assert [(r.server, r.ok) for r in results] == [
        ("elasticsearch", True), ("mongodb", True), ("kafka", True)], results
    assert results[0].capabilities == ["dense_vector", "knn", "aliases"]
    assert results[0].version.startswith("8.")


def test_wrong_urls_give_one_line_reasons_and_exit_1() -> None:
    dead = free_port()
    env = {**os.environ, "ESREC_ES__HOSTS": f"http://127.0.0.1:{dead}",
           "ESREC_MONGO__URI": f"mongodb://127.0.0.1:{dead}/",
           "ESREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}"}
    run = subprocess.run([sys.executable, "-m", "esrec", "doctor"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["elasticsearch", "FAIL"], ["fix", "check"], ["mongodb", "FAIL"], ["fix", "check"],
        ["kafka", "FAIL"], ["fix", "check"]]
    assert f"cannot connect to http://127.0.0.1:{dead}" in lines[0]
    assert "Connection refused" in lines[2]
    assert f"no Kafka broker answered at 127.0.0.1:{dead}" in lines[4]
    # each fix names the setting the address came from, and how to get local servers
    for line, variable in zip(lines[1::2], ("ESREC_ES__HOSTS", "ESREC_MONGO__URI",
                                            "ESREC_KAFKA__BOOTSTRAP_SERVERS"), strict=True):
        assert f"check {variable} (now " in line and "esrec stack up" in line


def test_an_unreachable_url_is_shown_with_its_password_masked() -> None:
    dead = free_port()
    result = check_elasticsearch(Settings(es={"hosts": [f"http://esrec:s3cret@127.0.0.1:{dead}"]}))
    assert not result.ok
    assert "s3cret" not in result.problem + result.fix
    assert f"http://esrec:{MASK}@127.0.0.1:{dead}" in result.problem
    assert "ESREC_ES__HOSTS" in result.fix


def test_invalid_settings_exit_2_naming_the_field() -> None:
    env = {**os.environ, "ESREC_ES__HOSTS": "localhost:9200"}
    run = subprocess.run([sys.executable, "-m", "esrec", "doctor"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "ESREC_ES__HOSTS" in run.stderr and "http://localhost:9200" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture
def standalone_mongod(tmp_path: Path) -> Iterator[str]:
    """A mongod that does not advertise a replica set (what a bare `mongod` looks like)."""
    port = free_port()
    command = [*SERVICES["mongodb"].command(tmp_path, "127.0.0.1", port), "--standalone"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"mongodb://127.0.0.1:{port}/"
    try:
        yield url
    finally:
        process.terminate()
        _wait_gone(process.pid, 10)


def test_standalone_mongod_is_explained(standalone_mongod: str) -> None:
    result = check_mongodb(Settings(mongo={"uri": standalone_mongod}))
    assert not result.ok
    assert "standalone mongod" in result.problem and "--replSet" in result.problem
