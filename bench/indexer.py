"""The indexer against its parts and against a naive loop, measured side by side.

    python -m bench.indexer [--docs 20000] [--configured]

Starts a private local stack (or uses the configured servers with --configured), trains
a small model, then measures on the same machine in one run:

    tower        featurize + item tower, batches of the indexer's size   (items/s)
    bulk         _bulk of ready-made vectors, same requests, one at a time (docs/s)
    stream       reading the change stream alone                          (events/s)
    indexer      change stream -> pipeline -> _bulk -> checkpoint         (changes/s)
    naive        per document: embed one, index one                       (docs/s)
    latency      MongoDB write -> indexed (realtime get) and -> visible to search (after
                 the index's refresh), at a steady rate, against an `esrec indexer run`
                 process as users run it                                   (p50/p99 ms)
    startup      `esrec indexer run` start -> its first checkpoint; `esrec --help`  (s)

With a private stack every server shares this machine's cores with esrec, so it also
reports each process's CPU per document in each phase and the CPU-bound ceiling: the
changes/s this machine could reach with every core busy at the indexer phase's costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import numpy as np
from elasticsearch import Elasticsearch

from esrec.cli.context import embedding_process
from esrec.lifetime import die_with_parent, exit_on_sigterm
from esrec.settings import Settings, load_settings, server_environment
from esrec.stack import LocalStack
from indexer.changes import Position
from indexer.documents import Projection
from indexer.layout import item_document
from indexer.service import Services
from indexer.sink import BULK_RESPONSE_FIELDS
from indexer.source import ChangeStreamSource, server_time
from runtime.clients import elasticsearch_client, mongo_client
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

REF = "bench@1"
FAST_WRITES_PER_S = 1000  # the freshness figure's write rate


def stack_settings(configured: bool,
              stack_dir: Path) -> tuple[Settings, dict[str, int], LocalStack | None]:
    if configured:
        return load_settings(), {}, None
    stack = LocalStack(stack_dir, bound=True)  # its servers die with the bench
    records = stack.up(pick_free_ports=True)
    urls = {name: record.url for name, record in records.items()}
    pids = {name: records[name].pid for name in ("elasticsearch", "mongodb")}
    return Settings(es={"hosts": [urls["elasticsearch"]]}, mongo={"uri": urls["mongodb"],
                    "database": "bench"}, kafka={"bootstrap_servers": [urls["kafka"]]},
                    index={"prefix": "bench"}), pids, stack


def kafka_used(settings: Settings, stack: LocalStack | None) -> str:
    """Which Kafka a bench ran on, for its JSON: the private stack's, or the configured one."""
    record = stack.running("kafka") if stack is not None else None
    if record is None:
        return f"configured: {','.join(settings.kafka.bootstrap_servers)}"
    return record.engine


def _catalog(count: int, offset: int) -> list[dict[str, Any]]:
    items = generate(SynthConfig(items=max(count, 20), users=5, mean_interactions=1)).items
    return [{**item, "_id": f"d{offset + i}"} for i, item in enumerate(items[:count])]


def _wait_caught_up(svc: Services, index: str, after: float, timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = svc.checkpoints.progress(index)
        if progress and progress.idle and progress.saved_at and \
                progress.saved_at.timestamp() > after:
            return progress.saved_at.timestamp()
        time.sleep(0.25)  # every query here costs the MongoDB server on the same cores
    raise TimeoutError("the indexer did not catch up")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuMeter:
    """CPU seconds used by named processes since it was made."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: _cpu_seconds(pid) for name, pid in pids.items()}

    def per_unit_us(self, units: int) -> dict[str, float]:
        return {name: round((_cpu_seconds(pid) - self.before[name]) * 1e6 / units, 1)
                for name, pid in self.pids.items()}


def measure(settings: Settings, docs: int, model_dir: Path,
            servers: dict[str, int]) -> dict[str, Any]:
    embedding_process()  # as `esrec indexer run` does
    es = elasticsearch_client(settings.es)
    db = mongo_client(settings.mongo)[settings.mongo.database]
    for name in db.list_collection_names():
        db.drop_collection(name)
    svc = Services.create(settings, es, db)
    registry = svc.registry
    registry.publish(model_dir)
    batch = settings.indexer.batch_max_docs
    documents = _catalog(docs, 0)
    artifact = registry.pull(REF)

    # featurize + item tower, batched, alone: the median of three passes (one pass
    # moved 7.7 -> 11.3 us an item between two runs)
    passes = []
    for _ in range(3):
        started, cpu_started = time.perf_counter(), time.process_time()
        vectors = np.concatenate([artifact.embed_items(documents[s:s + batch])
                                  for s in range(0, docs, batch)])
        passes.append((time.process_time() - cpu_started, time.perf_counter() - started))
    tower_cpu_s, tower_wall_s = sorted(passes)[1]
    tower = docs / tower_wall_s
    tower_cpu_us = tower_cpu_s * 1e6 / docs

    # the same documents the indexer writes (vector + projection), ready-made
    project = Projection(settings.indexer)
    projected = [project(document, len(bson.encode(document))) for document in documents]
    scratch = svc.new_generation(REF, point_alias=False).index
    now = datetime.now(UTC).isoformat()
    bulk_cpu = _CpuMeter({"client": os.getpid(), **servers})
    started = time.perf_counter()
    for start in range(0, docs, batch):  # the same request shape the indexer sends
        operations: list[dict[str, Any]] = []
        for document, fields, vector in zip(documents[start:start + batch],
                                            projected[start:start + batch],
                                            vectors[start:start + batch], strict=True):
            operations.append({"index": {"_index": scratch, "_id": document["_id"],
                                         "version": 1, "version_type": "external"}})
            operations.append(item_document(vector, fields, 1, now))
        es.bulk(operations=operations, filter_path=BULK_RESPONSE_FIELDS)
    bulk = docs / (time.perf_counter() - started)
    bulk_cpu_us = bulk_cpu.per_unit_us(docs)
    es.indices.delete(index=scratch)  # the indexer phase starts with the same empty cluster

    target = svc.new_generation(REF, point_alias=True)
    items = svc.items
    items.insert_one({"_id": "seed", "title": "seed"})
    resume = Position(None, server_time(items), 0)
    svc.checkpoints.save(target.index, resume)
    items.insert_many(documents)  # the backlog the indexer will chew through

    source = ChangeStreamSource(items, resume, await_ms=20)
    stream_cpu = _CpuMeter({"client": os.getpid(), **servers})
    started, read = time.perf_counter(), 0
    while read < docs:
        read += len(source.poll(batch, 1 << 30, 0.05).changes)
    stream = read / (time.perf_counter() - started)
    stream_cpu_us = stream_cpu.per_unit_us(read)
    source.close()

    daemon = svc.indexer([target])
    thread = threading.Thread(target=daemon.run)
    indexer_cpu = _CpuMeter({"indexer": os.getpid(), **servers})
    wall = time.time()
    thread.start()
    # the daemon's own catch-up time, from its checkpoint: the slow poll costs it nothing
    elapsed = _wait_caught_up(svc, target.index, wall) - wall
    indexer = docs / elapsed
    indexer_cpu_us = indexer_cpu.per_unit_us(docs)
    # the reference the indexer's own cost is read against: featurize + item tower, batched,
    # as the daemon ran them in this phase (its thread's CPU, on the same caches and cores)
    embed_cpu_us = (svc.metrics.registry.get_sample_value(
        "esrec_indexer_embed_cpu_seconds_total") or 0.0) * 1e6 / docs
    # every core busy with these processes at these costs: the most this machine can do
    cpu_ceiling = (os.cpu_count() or 1) * 1e6 / sum(indexer_cpu_us.values())

    svc.stop.set()
    thread.join(60)
    # the freshness reference: Elasticsearch alone taking the bulks that 1000 writes/s
    # make (one a batch wait), into the same index, at the same pace
    wait_ms = settings.indexer.batch_max_wait_ms
    raw_bulks = _paced_bulks(es, target.index, vectors[0], projected[0], now,
                             docs=max(1, round(FAST_WRITES_PER_S * wait_ms / 1000)),
                             every_s=wait_ms / 1000)
    # freshness against the daemon as users run it: its own process, not a thread that
    # shares this one's interpreter lock with the writer and the probes
    with _daemon_process(svc, settings, target.index) as first_checkpoint_s:
        latencies = [_latency(svc, es, target.index, seconds=4, rate_per_s=50, tick_s=0.02),
                     _latency(svc, es, target.index, seconds=5, rate_per_s=FAST_WRITES_PER_S,
                              sample=10)]
    import_torch_s = _import_torch_s()
    startup = {"daemon_to_first_checkpoint": round(first_checkpoint_s, 2),
               "esrec_help": round(_help_s(settings), 2),
               "python_import_torch": round(import_torch_s, 2)}
    # a change waits at most one batch wait, then rides one bulk: tail against tail
    freshness_reference_ms = wait_ms + raw_bulks["p99"]

    naive_docs = documents[: min(1000, docs)]  # ~1.5 s: long enough to average out noise
    naive_index = svc.new_generation(REF, point_alias=False).index
    started = time.perf_counter()
    for document in naive_docs:
        vector = artifact.embed_items([document])[0]
        es.index(index=naive_index, id=document["_id"],
                 document=item_document(vector, project(document, len(bson.encode(document))), 1,
                                        datetime.now(UTC).isoformat()))
    naive = len(naive_docs) / (time.perf_counter() - started)

    ceiling = min(tower, bulk)
    ratios = {  # esrec's cost over a reference measured in this run: what travels
        "cpu_per_change_over_embed_cpu_per_change": round(
            indexer_cpu_us["indexer"] / embed_cpu_us, 2),  # target <= 3
        "cpu_per_change_over_tower_cpu_per_item_alone": round(
            indexer_cpu_us["indexer"] / tower_cpu_us, 2),
        "daemon_start_over_import_torch": round(
            first_checkpoint_s / import_torch_s, 2),  # target <= 2
        "indexed_p99_at_1000_per_s_over_wait_plus_bulk": round(
            latencies[1]["indexed_p99"] / freshness_reference_ms, 2),  # target <= 3
    }
    return {
        "ratios": ratios,
        "references": {"embed_cpu_us_per_change": round(embed_cpu_us, 1),
                       "tower_cpu_us_per_item_alone": round(tower_cpu_us, 1),
                       "python_import_torch_s": round(import_torch_s, 2),
                       "batch_max_wait_ms": settings.indexer.batch_max_wait_ms,
                       "raw_bulk_at_1000_per_s_ms": raw_bulks},
        "benchmark": "indexer", "docs": docs, "batch_max_docs": batch,
        "tower_items_per_s": round(tower), "bulk_docs_per_s": round(bulk),
        "stream_events_per_s": round(stream), "indexer_changes_per_s": round(indexer),
        "naive_docs_per_s": round(naive, 1),
        "indexer_vs_min_tower_bulk": round(indexer / ceiling, 3),
        "indexer_vs_min_tower_bulk_stream": round(indexer / min(ceiling, stream), 3),
        "indexer_vs_naive": round(indexer / naive, 1),
        "write_latency_ms": latencies,
        "startup_s": startup,
        # CPU microseconds per document / event / change of each process, phase by phase:
        # on one machine the servers and esrec share the cores, which bounds the indexer
        "cpu_us_per_doc": {"bulk": bulk_cpu_us, "stream": stream_cpu_us,
                           "indexer": indexer_cpu_us},
        "cpus": os.cpu_count(), "cpu_bound_changes_per_s": round(cpu_ceiling),
        "indexer_vs_cpu_bound": round(indexer / cpu_ceiling, 3),
        "dead_letters": svc.db[settings.mongo.collections.dead_letters].count_documents({}),
    }


def _import_torch_s() -> float:
    """How long a fresh interpreter takes to import torch: the floor of any process that
    embeds, on this machine (median of three)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _paced_bulks(es: Elasticsearch, index: str, vector: Sequence[float],
                 fields: dict[str, Any], now: str, docs: int, every_s: float,
                 seconds: float = 5) -> dict[str, float]:
    """Round trips of bulks of ``docs`` ready documents sent every ``every_s`` (no esrec
    in the way): the p50 and p99 Elasticsearch itself gives at that pace, that index."""
    times = []
    started = time.perf_counter()
    for n in range(round(seconds / every_s)):
        sent = time.perf_counter()
        es.bulk(operations=[line for i in range(docs) for line in (
            {"index": {"_index": index, "_id": f"raw{n}-{i}", "version": 1,
                       "version_type": "external"}}, item_document(vector, fields, 1, now))],
                filter_path=BULK_RESPONSE_FIELDS)
        times.append((time.perf_counter() - sent) * 1000)
        time.sleep(max(0.0, started + (n + 1) * every_s - time.perf_counter()))
    return {"p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(float(np.percentile(times, 99)), 2), "docs": docs}


def _help_s(settings: Settings) -> float:
    """How long `esrec --help` takes (imports and argument parsing)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "esrec", "--help"], check=True, capture_output=True,
                   env={**os.environ, **server_environment(settings)})
    return time.perf_counter() - started


@contextlib.contextmanager
def _daemon_process(svc: Services, settings: Settings, index: str) -> Iterator[float]:
    """A fresh `esrec indexer run` process, running while the block does; yields the
    seconds from its start to its first saved checkpoint (imports, settings, the
    version's towers, the stream, an idle confirmation)."""
    env = {**os.environ, **server_environment(settings), "ESREC_INDEXER__METRICS_PORT": "0"}
    wall, started = time.time(), time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "esrec", "indexer", "run"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   preexec_fn=die_with_parent)
    try:
        while True:
            progress = svc.checkpoints.progress(index)
            if progress and progress.saved_at and progress.saved_at.timestamp() > wall:
                break
            if process.poll() is not None or time.perf_counter() - started > 300:
                output = process.stderr.read() if process.stderr else b""
                raise RuntimeError(f"the daemon did not save a checkpoint: {output[-2000:]!r}")
            time.sleep(0.05)
        yield time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(60)


def _latency(svc: Services, es: Elasticsearch, index: str, seconds: float,
             rate_per_s: float, tick_s: float = 0.01, sample: int = 1) -> dict[str, float]:
    """Write -> indexed and write -> searchable at a steady rate, one pass each: a search
    probe on the stand-in is a full scan (~50 ms at 20k items) that its one thread
    serves the indexer's bulks behind, so it would stretch the other pass's figure."""
    figures = _pass(svc, es, index, seconds, rate_per_s, tick_s, sample, "indexed")
    return {**figures, **_pass(svc, es, index, seconds, rate_per_s, tick_s, sample,
                               "searchable"), "rate_per_s": rate_per_s}


def _pass(svc: Services, es: Elasticsearch, index: str, seconds: float, rate_per_s: float,
          tick_s: float, sample: int, probe: str) -> dict[str, float]:
    """Insert at a steady rate (a batch every ``tick_s``); poll until every ``sample``-th
    document is ``indexed`` (a realtime mget finds it: esrec's part) or ``searchable``
    (a search finds it, after Elasticsearch's next refresh: index.refresh_interval)."""
    written: dict[str, float] = {}
    reached: dict[str, float] = {}
    per_tick = max(1, round(rate_per_s * tick_s))
    ticks = round(seconds / tick_s)
    done = threading.Event()

    def write() -> None:
        start = time.perf_counter()
        for tick in range(ticks):
            ids = [f"{probe}{rate_per_s:g}-{tick}-{n}" for n in range(per_tick)]
            stamp = time.perf_counter()
            svc.items.insert_many([{"_id": doc_id, "title": f"latency {tick}", "tags": ["x"]}
                                   for doc_id in ids], ordered=False)
            for n, doc_id in enumerate(ids):
                if (tick * per_tick + n) % sample == 0:
                    written[doc_id] = stamp
            time.sleep(max(0.0, start + (tick + 1) * tick_s - time.perf_counter()))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + seconds + 60
    while time.monotonic() < deadline and not (done.is_set() and len(reached) == len(written)):
        pending = [d for d in list(written) if d not in reached]
        if pending:
            if probe == "indexed":
                found = [doc["_id"] for doc in es.mget(index=index, ids=pending,
                                                       source=False)["docs"] if doc.get("found")]
            else:
                found = [hit["_id"] for hit in es.search(
                    index=index, query={"ids": {"values": pending}}, size=len(pending),
                    source=False)["hits"]["hits"]]
            now = time.perf_counter()
            for doc_id in found:
                reached.setdefault(doc_id, now)
        time.sleep(0.01)
    writer.join()
    delays = np.array([reached[d] - written[d] for d in reached]) * 1000
    return {f"{probe}_p50": round(float(np.percentile(delays, 50)), 1),
            f"{probe}_p99": round(float(np.percentile(delays, 99)), 1),
            f"{probe}_samples": len(reached), f"{probe}_unseen": len(written) - len(reached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)  # steady state: start-up amortised
    parser.add_argument("--configured", action="store_true",
                        help="use the servers in ESREC_* settings instead of a private stack")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate(SynthConfig(items=2000, users=1000))
        result = train(dataset, TrainConfig(epochs=1))
        model_dir = Path(tmp) / "model"
        result.export(model_dir, "bench", "1")
        settings, pids, stack = stack_settings(args.configured, Path(tmp) / "stack")
        try:
            print(json.dumps(measure(settings, args.docs, model_dir, pids), indent=2))
        finally:
            if stack is not None:
                stack.down()


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
