"""The local stack: start, idempotence, readiness, stop by PID, and the CLI round trip."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
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


@pytest.mark.long  # long: `esrec stack up/down` also runs in every test_demo run
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


def _running(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (a stack's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command and _pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                children.append(int(entry.name))
    return children


def _gone(pids: list[int], timeout_s: float = 60.0) -> list[int]:
    """``pids`` still alive after waiting up to ``timeout_s`` for them to end."""
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if _pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_servers_of_a_killed_owner_stop_with_it(tmp_path: Path, how: int) -> None:
    """A bench, the demo or a test session owns its stack (bound=True): however it ends,
    the kernel's parent-death signal stops every server it started."""
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from esrec.stack import LocalStack; "
        "LocalStack(Path(sys.argv[1]), bound=True).up(pick_free_ports=True); "
        "print('up', flush=True); time.sleep(600)"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        servers = [pid for pid in _running(str(tmp_path)) if pid != owner.pid]
        assert len(servers) == 3, servers  # Elasticsearch, MongoDB, Kafka
        owner.send_signal(how)
        owner.wait(30)
        assert _gone(servers) == []
    finally:
        if owner.poll() is None:
            owner.kill()
        LocalStack(tmp_path).down()


@pytest.mark.long  # long: the SIGTERM path is test_lifetime.py's, the demo's test_demo's
def test_a_terminated_demo_stops_its_servers_and_processes(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ESREC_")}
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        demo = subprocess.Popen([*ESREC, "demo", "--out", str(tmp_path / "demo"), "--items",
                                 "400", "--users", "150", "--epochs", "1"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "== user events -> Kafka -> user state" not in log.read_text():
            assert demo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        servers = [pid for pid in _running(str(tmp_path)) if pid != demo.pid]
        processes = [pid for pid in _children(demo.pid) if pid not in servers]
        assert len(servers) == 3 and len(processes) >= 2, (servers, processes)
        demo.terminate()
        assert demo.wait(120) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "== local servers stopped" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert _gone([*servers, *processes]) == []


def test_a_terminated_bench_stops_its_servers(tmp_path: Path) -> None:
    bench = subprocess.Popen([sys.executable, "-m", "bench.events", "--events", "200000"],
                             env={**os.environ, "TMPDIR": str(tmp_path)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        while len(servers := _running(str(tmp_path))) < 3:
            assert bench.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # past the stack's start, into the bench
        bench.terminate()
        assert bench.wait(120) == 128 + signal.SIGTERM
    finally:
        if bench.poll() is None:
            bench.kill()
    assert _gone(servers) == []
    assert not any(tmp_path.iterdir())  # its temporary directory was removed too
