"""The distributed mode against the embedded daemon, measured side by side in one run.

    python -m bench.scaleout [--docs 20000] [--workers 3] [--configured]

Every indexer runs as a real `esrec` process, as in production, on a backlog of ``docs``
new catalog documents:

    daemon      `esrec indexer run`                          changes/s, CPU per change
    relay + k   `esrec indexer relay` + k `esrec indexer worker`s, k = 1..workers:
                changes/s, CPU per change of every process, each worker's share
    backfill    `esrec models build` of a new version in the distributed mode, shared by
                k workers: documents/s

Rates are taken between the first and the last change a phase indexes (start-up is not
throughput), from the processes' own /metrics. With a private stack every server shares
this machine's cores: the CPU figures per change are what travels to other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.indexer import _catalog, _cpu_seconds, kafka_used, stack_settings
from esrec.lifetime import die_with_parent, exit_on_sigterm
from esrec.ports import free_port
from esrec.settings import Settings, server_environment
from indexer.service import Services
from runtime.clients import elasticsearch_client, mongo_client
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

NAME = "bench"


def _counter(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


class Proc:
    """One `esrec` command with a metrics port; CPU read from /proc."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        env = {**env, "ESREC_INDEXER__METRICS_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "-m", "esrec", *args], env=env,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def _phase(procs: dict[str, Proc], servers: dict[str, int], docs: int, counted: list[str],
           timeout_s: float = 900) -> dict[str, Any]:
    """Wait until the ``counted`` processes indexed ``docs`` changes; rates between the
    first and the last, CPU per change of every process over the same span."""
    started: float | None = None
    cpu0: dict[str, float] = {}
    first = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = sum(_counter(procs[name].port, "esrec_indexer_events_total") for name in counted)
        if started is None and done > 0:
            started = time.monotonic()
            cpu0 = {**{n: p.cpu() for n, p in procs.items()},
                    **{n: _cpu_seconds(pid) for n, pid in servers.items()}}
            first = done
        if done >= docs:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"{docs} changes not indexed within {timeout_s}s")
    assert started is not None
    elapsed = time.monotonic() - started
    cpu1 = {**{n: p.cpu() for n, p in procs.items()},
            **{n: _cpu_seconds(pid) for n, pid in servers.items()}}
    measured = docs - first
    shares = {name: _counter(procs[name].port, "esrec_indexer_events_total") / docs
              for name in counted}
    per_change = {name: round((cpu1[name] - cpu0[name]) * 1e6 / measured, 1) for name in cpu1}
    return {"changes_per_s": round(measured / elapsed),
            "cpu_us_per_change": per_change, "share": {k: round(v, 3) for k, v in
                                                        shares.items()}}


def measure(settings: Settings, docs: int, workers: int, model_dirs: list[Path],
            servers: dict[str, int], logs: Path) -> dict[str, Any]:
    es = elasticsearch_client(settings.es)
    db = mongo_client(settings.mongo)[settings.mongo.database]
    for name in db.list_collection_names():
        db.drop_collection(name)
    svc = Services.create(settings, es, db)
    for directory in model_dirs:
        svc.registry.publish(directory)
    env = {**os.environ, **server_environment(settings),
           "ESREC_INDEXER__PARTITIONS": str(max(6, 2 * workers)),
           "ESREC_INDEXER__LEASE_TTL_S": "4", "ESREC_ROLLOUT__FOLLOW_INTERVAL_S": "1"}
    built = subprocess.run([sys.executable, "-m", "esrec", "models", "build", f"{NAME}@1"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    offset = 0

    def backlog() -> None:
        nonlocal offset
        for start in range(0, docs, 5000):
            db.items.insert_many(_catalog(min(5000, docs - start), offset + start))
        offset += docs

    result: dict[str, Any] = {"benchmark": "scaleout", "docs": docs, "cpus": os.cpu_count()}
    backlog()
    daemon = {"daemon": Proc(env, logs / "daemon.log", "indexer", "run")}
    result["daemon"] = _phase(daemon, servers, docs, ["daemon"])
    daemon["daemon"].stop()
    daemon_cpu = result["daemon"]["cpu_us_per_change"]["daemon"]

    distributed = {**env, "ESREC_INDEXER__MODE": "distributed"}
    result["distributed"] = {}
    for count in range(1, workers + 1):
        backlog()
        procs = {"relay": Proc(distributed, logs / f"relay-{count}.log", "indexer", "relay")}
        for n in range(count):
            procs[f"worker-{n + 1}"] = Proc(distributed, logs / f"worker-{count}-{n}.log",
                                            "indexer", "worker")
        phase = _phase(procs, servers, docs, [f"worker-{n + 1}" for n in range(count)])
        for proc in procs.values():
            proc.stop()
        esrec_cpu = sum(v for k, v in phase["cpu_us_per_change"].items()
                        if k == "relay" or k.startswith("worker"))
        phase["distributed_tax"] = round(esrec_cpu / daemon_cpu, 3)
        shares = list(phase["share"].values())
        phase["share_spread"] = round((max(shares) - min(shares)) / (sum(shares) / len(shares)),
                                      3)
        result["distributed"][f"relay+{count}"] = phase

    result["backfill"] = {}
    catalog = db.items.estimated_document_count()
    for count in range(1, workers + 1):
        procs = {f"worker-{n + 1}": Proc(distributed, logs / f"bf-worker-{count}-{n}.log",
                                         "indexer", "worker") for n in range(count)}
        time.sleep(5)  # the group formed: every worker has its partitions
        started = time.monotonic()
        cpu0 = {n: p.cpu() for n, p in procs.items()}
        build = subprocess.run([sys.executable, "-m", "esrec", "models", "build",
                                f"{NAME}@{count + 1}"], env=distributed,
                               capture_output=True, text=True, timeout=900)
        elapsed = time.monotonic() - started
        assert build.returncode == 0, build.stderr[-2000:]
        result["backfill"][f"{count} workers"] = {
            "documents": catalog, "docs_per_s": round(catalog / elapsed),
            "cpu_us_per_doc": {n: round((p.cpu() - cpu0[n]) * 1e6 / catalog, 1)
                               for n, p in procs.items()}}
        for proc in procs.values():
            proc.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--configured", action="store_true",
                        help="use the servers in ESREC_* settings instead of a private stack")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate(SynthConfig(items=2000, users=1000))
        trained = train(dataset, TrainConfig(epochs=1))
        model_dirs = []
        for version in range(1, args.workers + 2):  # v1 live, one per backfill phase
            directory = Path(tmp) / f"model-{version}"
            trained.export(directory, NAME, str(version))
            model_dirs.append(directory)
        settings, pids, stack = stack_settings(args.configured, Path(tmp) / "stack")
        kafka = stack.running("kafka") if stack is not None else None
        if kafka is not None:
            pids["kafka"] = kafka.pid
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            result = measure(settings, args.docs, args.workers, model_dirs, pids, logs)
            print(json.dumps({"kafka": kafka_used(settings, stack), **result}, indent=2))
        finally:
            if stack is not None:
                stack.down()


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
