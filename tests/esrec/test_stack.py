"""The local stack: start, idempotence, readiness, stop by PID, and the CLI round trip."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.stack import LocalStack, StackError, _pid_alive

ESREC = [sys.executable, "-m", "esrec"]


def test_up_is_idempotent_and_down_stops_by_pid(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    first = stack.up(["elasticsearch"], pick_free_ports=True)["elasticsearch"]
    try:
        assert Elasticsearch(first.url).info()["version"]["number"].startswith("8.")
        again = stack.up(["elasticsearch"], pick_free_ports=True)["elasticsearch"]
        assert again == first  # nothing new was started
        assert stack.status()["elasticsearch"] == first
    finally:
        assert stack.down() == ["elasticsearch"]
    assert not _pid_alive(first.pid)
    assert stack.status()["elasticsearch"] is None
    assert stack.down() == []


def test_taken_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} .* in use; pass --es-port or --free"):
            LocalStack(tmp_path).up(["elasticsearch"], ports={"elasticsearch": port})


def test_stale_state_is_forgotten(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "kafka.json").write_text(
        f'{{"service": "kafka", "pid": {dead.pid}, "port": 1, "url": "x", "log": "x"}}'
    )
    assert LocalStack(tmp_path).running("kafka") is None
    assert not (tmp_path / "kafka.json").exists()


def test_cli_up_doctor_down_leaves_nothing_behind(tmp_path: Path) -> None:
    up = subprocess.run([*ESREC, "stack", "up", "--dir", str(tmp_path), "--free-ports"],
                        capture_output=True, text=True, timeout=120, check=True)
    env = dict(os.environ)
    for line in up.stdout.splitlines():
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = value
    try:
        status = subprocess.run([*ESREC, "stack", "status", "--dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout
        doctor = subprocess.run([*ESREC, "doctor"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert [line.split()[:2] for line in doctor.stdout.splitlines()] == [
            ["elasticsearch", "ok"], ["mongodb", "ok"], ["kafka", "ok"]]
    finally:
        subprocess.run([*ESREC, "stack", "down", "--dir", str(tmp_path)], check=True, timeout=60)
    pids = [int(found.group(1)) for found in re.finditer(r"\(pid (\d+),", up.stderr)]
    assert len(pids) == 3
    assert not any(_pid_alive(pid) for pid in pids)
    status = subprocess.run([*ESREC, "stack", "status", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 1
