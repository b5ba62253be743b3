"""The user-events consumer against a raw bulk_write of the same updates, side by side.

    python -m bench.events [--events 20000] [--users 5000] [--configured]

Starts a private local stack (or uses the configured servers), writes a synthetic catalog,
and makes a feed's event log: users with Zipf activity, items with Zipf popularity,
interleaved as live traffic is (a batch of 500 holds ~480 users). Then in one run:

    raw       the per-event user-state updates (one UpdateOne per event, as
              ``UserStates.update`` builds them), bulk_write in batches of 500
    grouped   the updates the consumer sends for the same batches of 500: one per user
              and batch (``UserStates.apply``'s grouping), bulk_write, nothing else
    consumer  a real `esrec recall events` process draining the log from Kafka: parse,
              validate, user state, measured popularity, cluster counts, commits

and prints events/s of each, the consumer's ratio to both (target >= 0.7), the
consumer's own CPU per event, and the CPU per event of the MongoDB server in each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.indexer import _cpu_seconds, _CpuMeter, kafka_used, stack_settings
from bench.quality import _applied
from esrec.lifetime import die_with_parent, exit_on_sigterm
from esrec.ports import free_port
from esrec.settings import Settings, server_environment
from recall.state import UserEvent, UserStates
from runtime.clients import kafka_options, mongo_client
from towers.dataset import usable_tags
from towers.synth import SynthConfig, generate

BATCH = 500  # the consumer's poll size (recall.events.MAX_RECORDS)


def _log(events: int, users: int, items: list[str], seed: int = 0) -> list[UserEvent]:
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, users + 1) ** 0.8
    item_p = 1.0 / np.arange(1, len(items) + 1) ** 0.9
    who = rng.choice(users, events, p=user_p / user_p.sum())
    what = rng.choice(len(items), events, p=item_p / item_p.sum())
    start = datetime.now(UTC) - timedelta(hours=2)
    return [UserEvent(event_id=f"e{n}", user_id=f"u{who[n]}", item_id=items[what[n]],
                      type="click", ts=start + timedelta(milliseconds=100 * n))
            for n in range(events)]


def _raw(settings: Settings, log: list[UserEvent], mongo_pid: int | None,
         grouped: bool) -> dict[str, Any]:
    """The state updates alone, per event or per user and batch, into a collection of
    their own."""
    db = mongo_client(settings.mongo)[settings.mongo.database]
    collection = f"raw_user_state_{'grouped' if grouped else 'per_event'}"
    raw_settings = settings.model_copy(update={"mongo": settings.mongo.model_copy(update={
        "collections": settings.mongo.collections.model_copy(update={
            "user_state": collection})})})
    states = UserStates(db, raw_settings)
    tags = {str(doc["_id"]): usable_tags(doc) for doc in db[
        settings.mongo.collections.items].find({}, {"tags": 1})}
    batches = []
    for start in range(0, len(log), BATCH):
        by_user: dict[str, list[UserEvent]] = {}
        for event in log[start:start + BATCH]:
            by_user.setdefault(event.user_id if grouped else event.event_id, []).append(event)
        batches.append([states.update(events, tags) for events in by_user.values()])
    meter = _CpuMeter({"mongodb": mongo_pid} if mongo_pid else {})
    started = time.perf_counter()
    for updates in batches:
        db[collection].bulk_write(updates, ordered=False)
    seconds = time.perf_counter() - started
    return {"events_per_s": round(len(log) / seconds), "seconds": round(seconds, 2),
            "server_cpu_us_per_event": meter.per_unit_us(len(log))}


def _consumer(settings: Settings, log: list[UserEvent], work: Path,
              mongo_pid: int | None) -> dict[str, Any]:
    """A real `esrec recall events` draining the log from Kafka."""
    kafka = settings.kafka
    admin = KafkaAdminClient(**kafka_options(kafka))
    admin.create_topics([NewTopic(name, 4, 1) for name in (kafka.topics.user_events,
                                                           kafka.topics.dead_letters)])
    admin.close()
    producer = KafkaProducer(**kafka_options(kafka), acks="all", linger_ms=20)
    for event in log:
        producer.send(kafka.topics.user_events, key=event.user_id.encode(),
                      value=event.model_dump_json().encode())
    producer.flush()
    producer.close()
    port = free_port()
    env = {**os.environ, **server_environment(settings)}
    with (work / "events.log").open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "esrec", "recall", "events",
                                    "--metrics-port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        started = time.perf_counter()
        first: tuple[float, float, float, float] | None = None  # wall, applied, cpus
        applied = 0.0
        while applied < len(log):
            if process.poll() is not None or time.perf_counter() - started > 3600:
                raise RuntimeError((work / "events.log").read_text()[-2000:])
            time.sleep(0.2)
            try:
                applied = _applied(port)
            except OSError:
                continue
            if first is None and applied > 0:  # steady state from the first batch on
                first = (time.perf_counter(), applied, _cpu_seconds(process.pid),
                         _cpu_seconds(mongo_pid) if mongo_pid else 0.0)
        assert first is not None
        seconds = time.perf_counter() - first[0]
        events = applied - first[1]
        return {"events_per_s": round(events / seconds), "seconds": round(seconds, 2),
                "first_applied_after_s": round(first[0] - started, 2),
                "esrec_cpu_us_per_event": round(
                    (_cpu_seconds(process.pid) - first[2]) * 1e6 / events, 1),
                "server_cpu_us_per_event": {"mongodb": round(
                    (_cpu_seconds(mongo_pid) - first[3]) * 1e6 / events, 1)}
                if mongo_pid else {}}
    finally:
        process.terminate()
        process.wait(60)


def measure(settings: Settings, events: int, users: int, work: Path,
            mongo_pid: int | None) -> dict[str, Any]:
    db = mongo_client(settings.mongo)[settings.mongo.database]
    catalog = generate(SynthConfig(items=3000, users=5, mean_interactions=1)).items
    db[settings.mongo.collections.items].insert_many(catalog)
    log = _log(events, users, [str(item["_id"]) for item in catalog])
    raw = _raw(settings, log, mongo_pid, grouped=False)
    grouped = _raw(settings, log, mongo_pid, grouped=True)
    consumer = _consumer(settings, log, work, mongo_pid)
    users_per_batch = np.mean([len({e.user_id for e in log[s:s + BATCH]})
                               for s in range(0, len(log), BATCH)])
    return {"benchmark": "events", "events": events, "users": users,
            "users_per_batch_of_500": round(float(users_per_batch)),
            "raw_bulk_write": raw, "grouped_bulk_write": grouped, "consumer": consumer,
            "consumer_vs_raw": round(consumer["events_per_s"] / raw["events_per_s"], 3),
            "consumer_vs_grouped": round(consumer["events_per_s"] / grouped["events_per_s"],
                                         3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--configured", action="store_true",
                        help="use the configured servers (ESREC_*) instead of a private stack")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esrec-bench-events-") as tmp:
        work = Path(tmp)
        settings, pids, stack = stack_settings(args.configured, work / "stack")
        try:
            result = measure(settings, args.events, args.users, work, pids.get("mongodb"))
            print(json.dumps({"kafka": kafka_used(settings, stack), **result}, indent=2))
        finally:
            if stack is not None:
                stack.down()


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
