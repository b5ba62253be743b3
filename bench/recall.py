"""Recall latency against the raw Elasticsearch round trip of the same queries, one run.

    python -m bench.recall [--items 3000] [--requests 400] [--configured] [--pin-servers]

Starts a private local stack (or uses the configured servers), trains a small model,
indexes a synthetic catalog, seeds user state, then measures for the same users:

    raw        the exact _msearch bodies the Recaller sends, replayed alone
    full       Recaller.recall: MongoDB read + user tower + i2i mget + _msearch + fusion
    overhead   full minus raw, per percentile: what esrec adds to Elasticsearch's time
    outside    per request, its time minus its own _msearch time (from the response's
               stages_ms): the overhead without the noise of two latency distributions,
               split into server_reads (resolve + state + seeds: MongoDB and the i2i mget)
               and esrec_compute (user tower, cluster, queries, rank, fusion: esrec CPU)
    cpu        the request thread's CPU time per request (everything it runs, HTTP clients
               and JSON parsing included): the cost without preemption or waiting
    stages     p50 / p99 of every stage
    idle wake  the user tower back to back vs after sleeping 5 ms, 20 ms and as long as
               an _msearch takes (no server at work meanwhile)

each at 1 and at 8 concurrent clients; then

    replayed   the same requests at 1 client with every server reply answered from a
               recording of this run, three times, each request's best pass kept:
               esrec's compute stages and CPU alone, with no wait (and no idle core)
               between them, the figure that travels to any machine; beside each
               request, the user tower alone on its user: the reference it is read against

Targets: p99 overhead <= 3 ms; esrec compute p99 <= 1.5 ms at 1 client (issue 17).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.indexer import stack_settings
from bench.timing import percentiles_ms
from esrec.cli.context import embedding_process
from esrec.lifetime import exit_on_sigterm
from esrec.settings import Settings
from indexer.lifecycle import Versions
from indexer.service import Services
from recall.fusion import rrf
from recall.recaller import STAGES, Recaller
from recall.seeds import SeedVectors
from recall.state import UserEvent, UserStates
from runtime.clients import elasticsearch_client, mongo_client
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

REF = "bench@1"
COMPUTE = ("user_tower", "cluster", "queries", "rank", "fusion")  # esrec's own work
CLIENTS = (1, 8)


def _stage_sum(stages: list[dict[str, float]], names: set[str]) -> dict[str, float]:
    """p50 / p99 over requests of the time each spent in the named stages."""
    return percentiles_ms([sum(ms for stage, ms in request.items() if stage in names) / 1000
                         for request in stages])


def _timed(call: Callable[[Any], Any], inputs: list[Any],
           clients: int) -> tuple[list[float], list[float], list[Any]]:
    """Seconds per call, the calling thread's CPU seconds per call, and the calls'
    results, from ``clients`` concurrent callers."""
    def one(item: Any) -> tuple[float, float, Any]:
        started, cpu = time.perf_counter(), time.thread_time()
        result = call(item)
        return time.perf_counter() - started, time.thread_time() - cpu, result

    with ThreadPoolExecutor(clients) as pool:
        seconds, cpu, results = zip(*pool.map(one, inputs), strict=True)
    return list(seconds), list(cpu), list(results)


def _prepare(settings: Settings, items: int, model_dir: Path) -> tuple[Recaller, list[str]]:
    dataset = generate(SynthConfig(items=items, users=500, seed=4))
    db = mongo_client(settings.mongo)[settings.mongo.database]
    es = elasticsearch_client(settings.es)
    write_mongo(dataset, db, Collections())
    services = Services.create(settings, es, db)
    registry = services.registry
    registry.publish(model_dir)
    versions = Versions(services)
    versions.build(REF)
    versions.promote(REF)
    states = UserStates(db, settings)
    now = datetime.now(UTC)
    events = [UserEvent(event_id=f"e{n}", user_id=i.user_id, item_id=i.item_id, type="click",
                        ts=now - timedelta(seconds=len(dataset.interactions) - n))
              for n, i in enumerate(dataset.interactions)]
    for start in range(0, len(events), 1000):
        states.apply(events[start:start + 1000])
    users = [str(user["_id"]) for user in dataset.users]
    return Recaller(es, db, registry, settings), users


def measure(settings: Settings, items: int, requests: int, model_dir: Path) -> dict[str, Any]:
    recaller, users = _prepare(settings, items, model_dir)
    embedding_process()  # as `esrec recall serve` does
    replies = Replies(recaller)
    msearch = replies.msearch
    sample = [users[n % len(users)] for n in range(requests)]
    for user in dict.fromkeys(sample):
        replies.record(user)
    bodies = replies.bodies
    for user in sample[:50]:  # warm caches on both paths alike
        msearch(searches=bodies[user])
        recaller.recall({"user_id": user})
    figures: dict[str, Any] = {"items": items, "requests": requests,
                               "channels": list(recaller.channels)}
    for clients in CLIENTS:
        raw = percentiles_ms(_timed(lambda u: msearch(searches=bodies[u]), sample, clients)[0])
        seconds, cpu, responses = _timed(lambda u: recaller.recall({"user_id": u}), sample,
                                         clients)
        full = percentiles_ms(seconds)
        stages = [response.stages_ms for response in responses]
        figures[f"clients_{clients}"] = {
            "raw_msearch_ms": raw, "full_recall_ms": full,
            "overhead_ms": {p: round(full[p] - raw[p], 2) for p in raw},
            "outside_msearch_ms": _stage_sum(stages, set(STAGES) - {"msearch"}),
            "server_reads_ms": _stage_sum(stages, {"resolve", "state", "seeds"}),
            "esrec_compute_ms": _stage_sum(stages, set(COMPUTE)),
            # the request thread's CPU, all of it (HTTP clients and JSON parsing too; the
            # i2i mget's thread not): what a core spends, without preemption and waits
            "request_thread_cpu_ms": percentiles_ms(cpu),
            "stages_ms": {stage: _stage_sum(stages, {stage}) for stage in STAGES}}
    seeds = {source: recaller.metrics.registry.get_sample_value(
        "esrec_recall_i2i_seeds_total", {"source": source}) or 0.0
        for source in ("kept", "looked_up")}
    figures["i2i_seeds_kept_share_in_situ"] = round(  # kept from an earlier request
        seeds["kept"] / max(1.0, seeds["kept"] + seeds["looked_up"]), 3)
    figures["replayed"] = _replayed(recaller, replies, sample)
    # the same with every seed looked up (no seed kept): the seed thread's mget answers
    # at once from the recording, inside the user tower stage
    kept_seeds = recaller.seed_vectors
    recaller.seed_vectors = SeedVectors(0, 0.0)
    figures["replayed_seeds_looked_up"] = _replayed(recaller, replies, sample)
    recaller.seed_vectors = kept_seeds
    figures["fusion_alone_ms"] = _fusion_alone(recaller.settings.recall.rrf_k)
    figures["idle_wake_ms"] = _idle_wake(recaller, users[0], pause_s=figures["clients_1"][
        "raw_msearch_ms"]["p50"] / 1000)
    figures["target_p99_overhead_ms"] = 3.0
    replayed_p99 = figures["replayed"]["esrec_compute_ms"]["p99"]
    figures["ratios"] = {  # esrec's cost over references measured in this run: what travels
        # replayed compute over the user tower alone on the same users, timed beside the
        # replayed requests (target <= 4)
        "replayed_compute_p99_over_user_tower_p50": round(
            replayed_p99 / figures["replayed"]["user_tower_alone_ms"]["p50"], 2),
        # the same compute in situ, between real _msearch waits (target <= 1.5)
        "in_situ_compute_p99_over_replayed_p99": round(
            figures["clients_1"]["esrec_compute_ms"]["p99"] / replayed_p99, 2)}
    return figures


class Replies:
    """Each user's server replies as the Recaller got them (state, i2i mget, _msearch),
    and the same requests answered from them again: esrec's compute with no server, no
    wait and no idle core in between, a figure that travels to any machine."""

    def __init__(self, recaller: Recaller) -> None:
        self.recaller = recaller
        self.msearch, self.mget = recaller.es.msearch, recaller.es.mget
        self.read = recaller.states.read
        self.bodies: dict[str, list[dict[str, Any]]] = {}  # the exact _msearch of each user
        self.replies: dict[str, dict[str, Any]] = {}
        # the i2i seeds' docs by (index, id): a request whose seeds were kept from an
        # earlier one makes no mget (recall.seeds), so one may be asked for in a replay
        # after the seeds expired that its own recording never made
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.user = ""  # whose replies answer while replaying

    def record(self, user: str) -> None:
        replies = self.replies.setdefault(user, {})

        def msearch(**kwargs: Any) -> Any:
            self.bodies[user] = kwargs["searches"]
            replies["msearch"] = self.msearch(**kwargs)
            return replies["msearch"]

        def mget(**kwargs: Any) -> Any:
            reply = self.mget(**kwargs)
            self.docs.update({(kwargs["index"], doc["_id"]): doc for doc in reply["docs"]})
            return reply

        def read(*args: Any) -> Any:
            replies["state"] = self.read(*args)
            return replies["state"]

        with self._answering(msearch, mget, read):
            self.recaller.recall({"user_id": user})

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        with self._answering(lambda **_: self.replies[self.user]["msearch"],
                             lambda index, ids, **_: {"docs": [
                                 self.docs[(index, item)] for item in ids]},
                             lambda *_: self.replies[self.user]["state"]):
            yield

    @contextlib.contextmanager
    def _answering(self, msearch: Callable[..., Any], mget: Callable[..., Any],
                   read: Callable[..., Any]) -> Iterator[None]:
        recaller = self.recaller
        recaller.es.msearch, recaller.es.mget = msearch, mget  # type: ignore[method-assign]
        recaller.states.read = read  # type: ignore[method-assign]
        try:
            yield
        finally:
            recaller.es.msearch, recaller.es.mget = self.msearch, self.mget  # type: ignore
            recaller.states.read = self.read  # type: ignore[method-assign]


def _replayed(recaller: Recaller, replies: Replies, sample: list[str],
              passes: int = 3) -> dict[str, Any]:
    """The sample's requests again at 1 client, each server reply answered from the
    recording, ``passes`` times; per request the pass with the least compute is kept
    (as timeit keeps its best: a neighbour's burst on this shared VM removed, the
    request's own cost kept). The compute stages p50 / p99 and the thread's CPU.

    The reference: right after each request, the user tower alone on that request's user,
    kept the same way (best of the passes). Measured beside the requests it divides, it
    sees the same machine: a reference taken in a burst of its own moved 0.19 -> 0.36 ms
    between two runs a minute apart on one VM."""
    artifact = recaller.resolver.current().artifact
    best: dict[int, tuple[float, dict[str, float], float]] = {}
    tower: dict[int, float] = {}
    with replies.replaying():
        for _ in range(passes):
            for n, user in enumerate(sample):
                replies.user = user
                started = time.thread_time()
                stages = recaller.recall({"user_id": user}).stages_ms
                cpu = time.thread_time() - started
                compute = sum(stages[stage] for stage in COMPUTE)
                if n not in best or compute < best[n][0]:
                    best[n] = (compute, stages, cpu)
                document = replies.replies[user]["state"].document
                if document:  # a cold start runs no tower
                    started = time.perf_counter()
                    artifact.embed_users([document])
                    seconds = time.perf_counter() - started
                    tower[n] = min(seconds, tower.get(n, seconds))
    kept = [stages for _, stages, _ in best.values()]
    return {"esrec_compute_ms": _stage_sum(kept, set(COMPUTE)),
            "request_thread_cpu_ms": percentiles_ms([cpu for _, _, cpu in best.values()]),
            "stages_ms": {stage: _stage_sum(kept, {stage}) for stage in COMPUTE},
            "user_tower_alone_ms": percentiles_ms(list(tower.values())),
            "passes": passes}


def _fusion_alone(rrf_k: int, channels: int = 5, candidates: int = 100,
                  calls: int = 500) -> dict[str, float]:
    """Weighted RRF of ``channels`` lists of ``candidates`` (a third of each list shared
    with the next channel's), back to back: the fusion's own cost, without the channels'
    hit parsing (the ``rank`` stage)."""
    rng = np.random.default_rng(0)
    ranked = {f"c{c}": [(f"i{int(n)}", float(candidates - r)) for r, n in enumerate(
        rng.choice(np.arange(c * 200, c * 200 + 300), candidates, replace=False))]
        for c in range(channels)}
    weights = {name: 1.0 for name in ranked}
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        rrf(ranked, weights, candidates, rrf_k)
        seconds.append(time.perf_counter() - started)
    return {**percentiles_ms(seconds), "channels": channels, "candidates": candidates}


def _idle_wake(recaller: Recaller, user_id: str, pause_s: float) -> dict[str, float]:
    """The same user-tower call back to back and after the process slept (no server at
    work) as long as a real cluster's _msearch takes (5 and 20 ms) and as long as this
    run's did: how much slower CPU work runs on a core that just woke up (cold caches,
    clock ramp-up, a VM's rescheduling), which inflates every stage at 1 client."""
    artifact = recaller.resolver.current().artifact
    user = recaller.states.read(user_id).document
    figures = {}
    pauses = {"back_to_back": 0.0, "after_5ms": 0.005, "after_20ms": 0.02,
              "after_pause": pause_s}
    for name, pause in pauses.items():
        seconds = []
        for _ in range(50):
            time.sleep(pause)
            started = time.perf_counter()
            artifact.embed_users([user])
            seconds.append(time.perf_counter() - started)
        figures[f"user_tower_{name}_p50"] = percentiles_ms(seconds)["p50"]
    figures["pause_ms"] = round(pause_s * 1000, 1)
    return figures


def _pin_servers(pids: list[int]) -> int:
    """Every thread of ``pids`` onto the last CPU, this process onto the others; returns
    the servers' CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    for pid in pids:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(thread), {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return cpus[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--configured", action="store_true",
                        help="use the servers in ESREC_* settings instead of a private stack")
    parser.add_argument("--pin-servers", action="store_true",
                        help="Linux, 2+ cores: the private stack's Elasticsearch and MongoDB "
                             "on the last core, the bench on the others (esrec's compute "
                             "without the servers it asks running on its core)")
    args = parser.parse_args()
    if args.pin_servers and (args.configured or len(os.sched_getaffinity(0)) < 2):
        parser.error("--pin-servers needs a private stack (no --configured) and 2+ cores")
    with tempfile.TemporaryDirectory() as tmp:
        result = train(generate(SynthConfig(items=args.items, users=500, seed=4)),
                       TrainConfig(epochs=1))
        model_dir = Path(tmp) / "model"
        result.export(model_dir, "bench", "1")
        settings, pids, stack = stack_settings(args.configured, Path(tmp) / "stack")
        try:
            pinned = _pin_servers(list(pids.values())) if args.pin_servers else None
            figures = measure(settings, args.items, args.requests, model_dir)
            print(json.dumps({**figures, "servers_pinned_to_cpu": pinned}, indent=2))
        finally:
            if stack is not None:
                stack.down()


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
