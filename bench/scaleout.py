"""The distributed mode against the embedded daemon, measured side by side in one run.

    python -m bench.scaleout [--docs 20000] [--catalog 20000] [--workers 3]
                             [--paced-docs-per-s 500] [--deadline-s 600] [--no-pin]
                             [--configured]

Every indexer runs as a real `esrec` process, as in production:

    daemon      `esrec indexer run` on a backlog of ``docs`` changes (new titles for the
                ``catalog`` documents in turn), before, between and after the relay + k
                groups: each tax reads the mean of the runs on either side (on this VM
                the same daemon moved 10-55 % within one run, printed as the run's
                noise floor)
    relay + k   `esrec indexer relay` + k `esrec indexer worker`s, k = 1..workers: the
                backlog written, then the group formed (every worker owns partitions);
                the workers paused (SIGSTOP, within their session timeout) while the
                relay starts and publishes the backlog, then resumed to drain it: each
                stage measured at saturation, as the daemon's catch-up is
    backfill    two `esrec models build`s of new versions in the distributed mode, shared
                by k workers (the group formed first) over the whole catalog: one as
                fast as the servers go (docs/s, the CPU of a chunk's document), one
                paced at k x ``paced-docs-per-s`` (each worker's documents per CPU-second,
                once the group keeps up with the build), well under the servers' pace:
                at 1000 a worker, 3 workers' 3000/s were about all the servers took here
                (2.4-4.7k/s), and the paced build ran saturated

Rates and CPU are taken between the first and the last change (or chunk) a phase
indexes, from the processes' own /metrics and /proc, each worker over its own window:
start-up and model loading are not throughput. With ``--pin`` (the default on 2+ cores)
the servers run on core 0 and every esrec process on the others, so the workers' CPU is
theirs alone. What travels to other machines are the same-run ratios: the distributed
tax (relay + workers CPU per change over the daemon's), a chunk's cost per document over
a live change's, and each worker's documents per CPU-second from 1 to k workers at the
same load per worker (constant: the workers scale with cores). The same load, because
this VM charges a process for waking up (the item tower's one-item call: 0.18 ms back to
back, 1.35 ms after a 20 ms sleep), so CPU per document depends on how busy a worker is;
at the servers' pace k workers each get 1/k of it. Busy (net of the idle CPU measured for
6 s before the builds) is printed beside it. Each stream consumer resumes where the other
stopped (the daemon's checkpoint, the relay's lease): neither reads the other's changes
again.
Progress goes to stderr every 10 s; the whole run stops at ``--deadline-s``.
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
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pymongo import ReplaceOne
from pymongo.collection import Collection

from bench.indexer import _catalog, _cpu_seconds, kafka_used, stack_settings
from esrec.lifetime import die_with_parent, exit_on_sigterm
from esrec.ports import free_port
from esrec.settings import Settings, server_environment
from indexer.lease import Lease
from indexer.service import SOURCE, Services
from runtime.clients import elasticsearch_client, mongo_client
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

NAME = "bench"
PROGRESS_EVERY_S = 10.0
SCRAPE_EVERY_S = 0.5
IDLE_S = 6.0  # how long a formed group's idle CPU is measured before a build
EVENTS = "esrec_indexer_events_total"
PUBLISHED = "esrec_relay_published_total"


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto ``cpus`` (threads it starts inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:  # a thread that ended meanwhile
            continue


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("bench.scaleout ran past its --deadline-s")
        return left


class Proc:
    """One `esrec` command with a metrics port; CPU read from /proc."""

    def __init__(self, env: dict[str, str], log: Path, args: list[str],
                 cpus: set[int] | None) -> None:
        self.port = free_port()
        env = {**env, "ESREC_INDEXER__METRICS_PORT": str(self.port)}

        def start() -> None:
            die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.process = subprocess.Popen([sys.executable, "-m", "esrec", *args], env=env,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                        preexec_fn=start)

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def metric(self, name: str) -> float:
        return _metric(self.port, name)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def _progress(what: str, done: float, total: float, since: float) -> None:
    print(f"bench.scaleout: {what}: {int(done)}/{int(total)} "
          f"({time.monotonic() - since:.0f} s)", file=sys.stderr, flush=True)


def _group_formed(workers: dict[str, Proc], partitions: int, deadline: Deadline) -> None:
    """Until every worker owns item-changes partitions and they add up to the topic's."""
    since, steady = time.monotonic(), 0
    while steady < 3:  # three reads in a row: no rebalance in flight
        owned = [proc.metric("esrec_worker_partitions") for proc in workers.values()]
        steady = steady + 1 if all(owned) and sum(owned) == partitions else 0
        if time.monotonic() - since > PROGRESS_EVERY_S:
            _progress("group forming, partitions owned", sum(owned), partitions, since)
            since = time.monotonic()
        time.sleep(min(0.5, deadline.left()))


def _mean_batch(proc: Proc) -> float:
    """Changes per batch a process wrote: what its per-batch costs are spread over."""
    count = proc.metric("esrec_indexer_batch_size_count")
    return round(proc.metric("esrec_indexer_batch_size_sum") / count, 1) if count else 0.0


def _window(procs: dict[str, Proc], servers: dict[str, int], counted: dict[str, str],
            total: float, what: str, deadline: Deadline,
            done: Callable[[], bool] = lambda: False,
            steady: Callable[[float], bool] = lambda reached: True) -> dict[str, Any]:
    """From the first to the last of ``total`` units the ``counted`` processes report
    (name -> metric), or until ``done()``: the span, the units each counted, and every
    process's CPU seconds (a child that ended is read before it is reaped). ``own``: each
    counted process's own window, from the first to the last scrape its units moved in, so
    that a worker which starts (and loads a model) after another is measured from its own
    first units, as the first worker is; own windows open only once ``steady(units
    reached)``."""
    started: float | None = None
    cpu0: dict[str, float] = {}
    units0: dict[str, float] = {}
    first = 0.0
    shown = time.monotonic()
    own_first: dict[str, tuple[float, float, float]] = {}  # name -> (time, units, cpu)
    own_last: dict[str, tuple[float, float, float]] = {}
    # counters of processes that ran an earlier window go on from where it left them
    base = {name: procs[name].metric(metric) for name, metric in counted.items()}
    while True:
        units = {name: procs[name].metric(metric) - base[name]
                 for name, metric in counted.items()}
        reached = sum(units.values())
        now = time.monotonic()
        ready = steady(reached)
        for name, count in units.items():
            if ready and count > 0 and own_last.get(name, (0.0, 0.0, 0.0))[1] != count:
                own_last[name] = (now, count, procs[name].cpu())
                own_first.setdefault(name, own_last[name])
        if started is None and reached > 0:
            started = now
            cpu0 = {**{n: p.cpu() for n, p in procs.items()},
                    **{n: _cpu_seconds(pid) for n, pid in servers.items()}}
            first, units0 = reached, units
        if reached >= total or done():  # done: read before it is reaped
            break
        if now - shown > PROGRESS_EVERY_S:
            _progress(what, reached, total, shown - PROGRESS_EVERY_S)
            shown = now
        # the start caught to 50 ms; then every 0.5 s: each /metrics scrape is CPU of the
        # scraped process, which 20 scrapes a second made a worker's biggest cost
        time.sleep(min(0.05 if started is None else SCRAPE_EVERY_S, deadline.left()))
    assert started is not None
    cpu1 = {**{n: p.cpu() for n, p in procs.items()},
            **{n: _cpu_seconds(pid) for n, pid in servers.items()}}
    return {"elapsed_s": time.monotonic() - started, "measured": reached - first,
            "units": {n: units[n] - units0.get(n, 0.0) for n in units},
            "cpu_s": {n: cpu1[n] - cpu0[n] for n in cpu1},
            "own": {n: {"elapsed_s": own_last[n][0] - t, "units": own_last[n][1] - count,
                        "cpu_s": own_last[n][2] - cpu}
                    for n, (t, count, cpu) in own_first.items()}}


def _per_unit_us(window: dict[str, Any]) -> dict[str, float]:
    return {n: round(cpu * 1e6 / window["measured"], 1) for n, cpu in window["cpu_s"].items()}


def measure(settings: Settings, docs: int, catalog: int, workers: int, model_dirs: list[Path],
            servers: dict[str, int], logs: Path, pin: bool, rate_per_worker: float,
            deadline: Deadline) -> dict[str, Any]:
    es = elasticsearch_client(settings.es)
    db = mongo_client(settings.mongo)[settings.mongo.database]
    for name in db.list_collection_names():
        db.drop_collection(name)
    svc = Services.create(settings, es, db)
    checkpoints = svc.checkpoints.collection
    for directory in model_dirs:
        svc.registry.publish(directory)
    partitions = max(6, 2 * workers)
    esrec_cpus = set(range(1, os.cpu_count() or 1)) if pin else None
    if pin and esrec_cpus:
        for pid in [*servers.values(), os.getpid()]:  # this process polls: beside them
            _pin(pid, {0})
    env = {**os.environ, **server_environment(settings),
           "ESREC_INDEXER__PARTITIONS": str(partitions),
           "ESREC_INDEXER__LEASE_TTL_S": "4", "ESREC_ROLLOUT__FOLLOW_INTERVAL_S": "1"}
    base = _catalog(catalog, 0)
    for start in range(0, catalog, 5000):
        db.items.insert_many(base[start:start + 5000])
    built = subprocess.run([sys.executable, "-m", "esrec", "models", "build", f"{NAME}@1"],
                           env=env, capture_output=True, text=True, timeout=deadline.left())
    assert built.returncode == 0, built.stderr[-2000:]
    rounds = 0

    def backlog() -> None:
        """``docs`` changes: new titles for catalog documents in turn (the catalog, which
        each build covers, keeps its size)."""
        nonlocal rounds
        for start in range(0, docs, 5000):
            db.items.bulk_write([ReplaceOne({"_id": item["_id"]}, {
                **item, "title": f"{item['title']} ({rounds}.{n})"})
                for n in range(start, min(docs, start + 5000))
                for item in [base[n % catalog]]], ordered=False)
        rounds += 1

    def proc(env: dict[str, str], log: str, *args: str) -> Proc:
        return Proc(env, logs / log, list(args), esrec_cpus)

    result: dict[str, Any] = {"benchmark": "scaleout", "docs": docs, "catalog": catalog,
                              "cpus": os.cpu_count(),
                              "pinned": "servers on core 0, esrec on the others"
                              if esrec_cpus else "no"}
    index = svc.index_of(f"{NAME}@1")
    assert index is not None

    def relay_from_daemon() -> None:
        """The next relay starts where the daemon stopped (it indexed everything before),
        through the lease as a relay would save it."""
        lease, position = Lease(checkpoints, SOURCE, NAME, 4), svc.checkpoints.load(index)
        if lease.position() is not None and position is not None:  # a relay ran before
            while not lease.acquire():  # a relay stopped cleanly gives it up at once
                time.sleep(min(0.5, deadline.left()))
            lease.save(position, None, idle=False)
            lease.release()

    def daemon_phase(name: str) -> dict[str, Any]:
        """The embedded daemon's catch-up on a backlog, from where the last relay stopped
        (the workers indexed everything before it)."""
        if (position := Lease(checkpoints, SOURCE, NAME, 4).position()) is not None:
            svc.checkpoints.save(index, position)
        backlog()
        daemon = {"daemon": proc(env, f"daemon-{name.replace(' ', '-')}.log", "indexer",
                                 "run")}
        window = _window(daemon, servers, {"daemon": EVENTS}, docs,
                         f"daemon {name}, changes", deadline)
        batch = _mean_batch(daemon["daemon"])
        daemon["daemon"].stop()
        return {"changes_per_s": round(window["measured"] / window["elapsed_s"]),
                "cpu_us_per_change": _per_unit_us(window), "changes_per_batch": batch}

    # a session timeout with room for the pause below (heartbeats every 7.5 s)
    distributed = {**env, "ESREC_INDEXER__MODE": "distributed",
                   "ESREC_INDEXER__WORKER_SESSION_TIMEOUT_MS": "30000"}
    result["daemon"], result["distributed"] = {}, {}
    cpu_of = {}  # group -> its esrec CPU per change
    for count in range(1, workers + 1):
        # the reference on both sides of each group: this VM's speed moves within minutes
        result["daemon"][f"before relay+{count}"] = daemon_phase(f"before relay+{count}")
        relay_from_daemon()
        backlog()  # written first, as for the daemon: each stage then runs saturated
        group = {f"worker-{n + 1}": proc(distributed, f"worker-{count}-{n}.log", "indexer",
                                         "worker") for n in range(count)}
        _group_formed(group, partitions, deadline)
        # the relay publishes the backlog while the workers are paused (well within
        # their session timeout), then the workers drain the topic
        for worker in group.values():
            worker.process.send_signal(signal.SIGSTOP)
        try:
            relay = proc(distributed, f"relay-{count}.log", "indexer", "relay")
            published = _window({"relay": relay}, servers, {"relay": PUBLISHED}, docs,
                                f"relay of {count}, changes published", deadline)
        finally:
            for worker in group.values():
                worker.process.send_signal(signal.SIGCONT)
        window = _window(group, servers, {name: EVENTS for name in group}, docs,
                         f"{count} worker(s), changes", deadline)
        batches = {name: _mean_batch(worker) for name, worker in group.items()}
        for each in [relay, *group.values()]:
            each.stop()
        relayed, drained = _per_unit_us(published), _per_unit_us(window)
        per_change = {name: round(relayed.get(name, 0.0) + drained.get(name, 0.0), 1)
                      for name in {**relayed, **drained}}
        cpu_of[count] = per_change["relay"] + sum(per_change[name] for name in group)
        shares = [units / window["measured"] for units in window["units"].values()]
        result["distributed"][f"relay+{count}"] = {
            "relay_changes_per_s": round(published["measured"] / published["elapsed_s"]),
            "workers_changes_per_s": round(window["measured"] / window["elapsed_s"]),
            "cpu_us_per_change": per_change,
            "changes_per_batch": batches,
            "share": [round(share, 3) for share in shares],
            "share_spread": round((max(shares) - min(shares)) / (1 / count), 3)}
    result["daemon"]["after the last"] = daemon_phase("after the last")
    daemon_cpu = [run["cpu_us_per_change"]["daemon"] for run in result["daemon"].values()]
    for count, cpu in cpu_of.items():  # over the mean of the daemon runs on either side
        result["distributed"][f"relay+{count}"]["distributed_tax"] = round(
            2 * cpu / (daemon_cpu[count - 1] + daemon_cpu[count]), 3)

    def build(group: dict[str, Proc], version: int, what: str,
              docs_per_s: float) -> tuple[dict[str, Any], float]:
        """A distributed build of the catalog by ``group``: the workers' window and the
        build's own CPU per document it publishes."""
        paced = {**distributed, "ESREC_INDEXER__BACKFILL_MAX_DOCS_PER_S": str(docs_per_s)}
        build = Proc(paced, logs / f"build-{version}.log", ["models", "build",
                                                             f"{NAME}@{version}"], esrec_cpus)
        publishing = Publishing(checkpoints, build.process.pid, catalog)
        # paced: measured once the group keeps up with the build (two pages behind at
        # most: one being written, one published since the scrape): its first chunks wait
        # for each worker to load the version, and the backlog that leaves is drained as
        # fast as the servers go
        pages = 2 * settings.indexer.batch_max_docs
        window = _window({**group, "build": build}, servers,
                         {name: EVENTS for name in group}, catalog, what, deadline,
                         done=partial(_exited, build.process.pid),
                         steady=lambda reached: not docs_per_s
                         or publishing.published() - reached <= pages)
        assert build.process.wait(deadline.left()) == 0, f"see {logs}/build-{version}.log"
        return window, publishing.us_per_doc()

    result["backfill"] = {}
    version = 1
    for count in range(1, workers + 1):
        group = {f"worker-{n + 1}": proc(distributed, f"bf-worker-{count}-{n}.log", "indexer",
                                         "worker") for n in range(count)}
        _group_formed(group, partitions, deadline)
        idle = _idle_cpu(group)
        fast, publish_us = build(group, version := version + 1,
                                 f"backfill with {count} worker(s), documents", 0)
        paced, _ = build(group, version := version + 1,
                         f"backfill at {rate_per_worker:g}/s a worker, documents",
                         count * rate_per_worker)
        for each in group.values():
            each.stop()
        own = paced["own"]
        result["backfill"][f"{count} workers"] = {
            "documents": catalog,
            "docs_per_s": round(fast["measured"] / fast["elapsed_s"]),
            "cpu_us_per_doc": _per_unit_us(fast),
            "build_publish_cpu_us_per_doc": publish_us,
            "worker_cpu_us_per_doc": {name: round(cpu * 1e6 / units, 1) for name in group
                                      if (units := fast["units"][name])
                                      and (cpu := fast["cpu_s"][name])},
            "paced": {
                "docs_per_s": round(paced["measured"] / paced["elapsed_s"]),
                "steady_docs_per_s": round(sum(own[name]["units"] / own[name]["elapsed_s"]
                                               for name in own if own[name]["elapsed_s"])),
                "docs_per_worker_cpu_s": {name: round(own[name]["units"] / own[name]["cpu_s"])
                                          for name in group if own.get(name, {}).get("cpu_s")},
                "idle_cpu_ms_per_s": {name: round(rate * 1000, 1)
                                      for name, rate in idle.items()},
                "docs_per_worker_busy_cpu_s": {
                    name: round(own[name]["units"] / busy) for name in group if name in own
                    and (busy := own[name]["cpu_s"] - idle[name] * own[name]["elapsed_s"]) > 0}}}
    return _ratios(result, workers)


class Publishing:
    """A distributed build's own CPU per document it publishes (ids read, chunks sent,
    progress saved), from its first to its last published chunk: sampled every 20 ms on a
    thread of its own, as a build publishes a 20k catalog in about a second."""

    def __init__(self, checkpoints: Collection[Any], pid: int, documents: int) -> None:
        self.first: tuple[float, float] | None = None  # (documents, cpu seconds)
        self.last: tuple[float, float] | None = None
        self.thread = threading.Thread(target=self._sample, args=(checkpoints, pid, documents),
                                       daemon=True)
        self.thread.start()

    def _sample(self, checkpoints: Collection[Any], pid: int, documents: int) -> None:
        query = {"_id": {"$regex": "^backfill\\|"}, "done": False, "chunks": {"$gt": 0}}
        while not _exited(pid):  # the main thread reaps it only after the last chunk
            state = checkpoints.find_one(query, {"documents": 1})
            if state is not None and (self.last is None or state["documents"] != self.last[0]):
                self.last = (state["documents"], _cpu_seconds(pid))
                self.first = self.first or self.last
                if state["documents"] >= documents:
                    return
            time.sleep(0.02)

    def published(self) -> float:
        """Documents published so far (as last sampled)."""
        return self.last[0] if self.last is not None else 0.0

    def us_per_doc(self) -> float:
        self.thread.join()
        assert self.first is not None and self.last is not None and self.last[0] > self.first[0], \
            "the build published its chunks faster than they could be sampled"
        return round((self.last[1] - self.first[1]) * 1e6 / (self.last[0] - self.first[0]), 1)


def _idle_cpu(procs: dict[str, Proc]) -> dict[str, float]:
    """Each process's CPU seconds per second with nothing to do: a worker's fixed cost
    (heartbeats, fetch rounds, following the registry), which the servers' pace, not
    the worker, spreads over its documents."""
    before = {name: _thread_cpu(proc.process.pid) for name, proc in procs.items()}
    time.sleep(IDLE_S)
    return {name: (_thread_cpu(proc.process.pid) - before[name]) / IDLE_S
            for name, proc in procs.items()}


def _thread_cpu(pid: int) -> float:
    """CPU seconds of a process's live threads in nanoseconds' precision (schedstat):
    /proc/PID/stat counts 10 ms ticks, too coarse for a few ms a second."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def _exited(pid: int) -> bool:
    """A child that ended and is not reaped yet (a zombie): /proc still has its CPU."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _ratios(result: dict[str, Any], workers: int) -> dict[str, Any]:
    """The same-run ratios the README's bars read."""
    live = result["distributed"]["relay+1"]["cpu_us_per_change"]
    live_cpu = live["relay"] + live["worker-1"]
    one = result["backfill"]["1 workers"]
    daemon = [run["cpu_us_per_change"]["daemon"] for run in result["daemon"].values()]
    def spread(key: str) -> float:
        rates: list[float] = [rate for phase in result["backfill"].values()
                              for rate in phase["paced"][key].values()]
        return round((max(rates) - min(rates)) / min(rates), 3)

    result["ratios"] = {
        "distributed_tax": {k: v["distributed_tax"] for k, v in
                            result["distributed"].items()},
        "chunk_vs_live_change": round((one["worker_cpu_us_per_doc"]["worker-1"]
                                       + one["build_publish_cpu_us_per_doc"]) / live_cpu, 3),
        "paced_worker_docs_per_cpu_s_spread": spread("docs_per_worker_cpu_s"),
        "paced_worker_docs_per_busy_cpu_s_spread": spread("docs_per_worker_busy_cpu_s"),
        # the same daemon on the same kind of backlog minutes apart: this run's noise
        "daemon_cpu_per_change_spread": round((max(daemon) - min(daemon)) / min(daemon), 3)}
    result["targets"] = {"distributed_tax": "<= 1.2", "chunk_vs_live_change": "<= 1.3",
                         "paced_worker_docs_per_cpu_s_spread": "<= 0.15"}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000,
                        help="changes each live phase indexes")
    parser.add_argument("--catalog", type=int, default=20000,
                        help="catalog documents (each backfill phase builds them all)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--paced-docs-per-s", type=float, default=500,
                        help="each worker's share of the paced build (under the servers' pace)")
    parser.add_argument("--deadline-s", type=float, default=600)
    parser.add_argument("--no-pin", action="store_true",
                        help="let the servers and esrec share every core")
    parser.add_argument("--configured", action="store_true",
                        help="use the servers in ESREC_* settings instead of a private stack")
    args = parser.parse_args()
    deadline = Deadline(args.deadline_s)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate(SynthConfig(items=2000, users=1000))
        trained = train(dataset, TrainConfig(epochs=1))
        model_dirs = []
        for version in range(1, 2 * args.workers + 2):  # v1 live, two builds a group
            directory = Path(tmp) / f"model-{version}"
            trained.export(directory, NAME, str(version))
            model_dirs.append(directory)
        settings, pids, stack = stack_settings(args.configured, Path(tmp) / "stack")
        kafka = stack.running("kafka") if stack is not None else None
        if kafka is not None:
            pids["kafka"] = kafka.pid
        logs = Path(tmp) / "logs"
        logs.mkdir()
        pin = not args.no_pin and not args.configured and (os.cpu_count() or 1) >= 2
        try:
            result = measure(settings, args.docs, args.catalog, args.workers, model_dirs, pids,
                             logs, pin, args.paced_docs_per_s, deadline)
            print(json.dumps({"kafka": kafka_used(settings, stack), **result}, indent=2))
        finally:
            if stack is not None:
                stack.down()


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
