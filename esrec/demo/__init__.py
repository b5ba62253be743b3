"""`esrec demo`: the whole mission, end to end, with a check at every step.

    servers (local stand-ins unless configured) -> synthetic catalog, users, interactions
    -> train + publish v1 -> build v1, promote -> `esrec indexer run` (live stream) and
    `esrec recall events` (Kafka -> user state) as real processes -> user events -> recall
    tables with provenance -> catalog changes seen by recall -> train v2 -> `esrec models
    roll` -> rollback -> stop everything -> report.md + plots
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
from elasticsearch import Elasticsearch
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from pymongo import UpdateOne

from esrec.cli.towers import print_epoch
from esrec.demo.processes import Background, environment, esrec, scrape_counter
from esrec.demo.report import Record, write
from esrec.ports import free_port
from esrec.settings import Settings
from indexer.lifecycle import Versions
from indexer.service import Services
from recall.recaller import Recaller
from recall.request import RecallResponse
from runtime.clients import MongoCollection, elasticsearch_client, kafka_options, mongo_client
from runtime.errors import Refused
from towers.dataset import Collections, write_mongo
from towers.report import training_summary
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

SEE_WITHIN_S = 15.0  # events and catalog changes must reach recall within this


def _failures(run: subprocess.CompletedProcess[str]) -> str:
    """What a failed `esrec` command said, in one line: its FAIL gates and its error."""
    lines = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    lines += [line for line in run.stderr.splitlines() if line.startswith("esrec:")]
    return "; ".join(lines) or f"exit {run.returncode}: {run.stderr.strip()[-300:]}"


class DemoFailed(Refused):
    """A check failed; the message says which and what was seen."""


@dataclass(frozen=True)
class DemoSize:
    items: int = 3000
    users: int = 2000
    epochs: int = 6
    latency_requests: int = 300


class Demo:
    def __init__(self, settings: Settings, out: Path, size: DemoSize) -> None:
        self.settings = settings
        self.out = out
        self.size = size
        self.record = Record()
        self.db = mongo_client(settings.mongo)[settings.mongo.database]
        self.es: Elasticsearch = elasticsearch_client(settings.es)
        self.services = Services.create(settings, self.es, self.db)
        self.registry = self.services.registry
        self.versions = Versions(self.services)
        self.metrics_port = free_port()
        self.env = environment(settings, self.metrics_port, free_port())
        self.processes: list[Background] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Announce a step, time it, and record its outcome; append notes to the list."""
        click.echo(f"\n== {name}", err=True)
        notes: list[str] = []
        started = time.perf_counter()
        try:
            yield notes
        except Exception as error:
            self.record.steps.append((name, time.perf_counter() - started, False, str(error)))
            raise
        seconds = time.perf_counter() - started
        self.record.steps.append((name, seconds, True, "; ".join(notes)))
        click.echo(f"   ok in {seconds:.1f}s{': ' + '; '.join(notes) if notes else ''}",
                   err=True)

    def run(self) -> Path:
        """Every step in order, then the report (also when a check failed: DemoFailed).
        The output directory is the demo's own: what an earlier run left there goes."""
        for earlier in (self.out / "models", self.out / "logs"):
            shutil.rmtree(earlier, ignore_errors=True)
        try:
            self._steps()
        finally:
            try:
                self._stop()
            finally:
                self.report = write(self.record, self.out)
        return self.report

    def _steps(self) -> None:
        self._data()
        self._model("1", seed=0, dims=32)
        self._serve_v1()
        users = self._events()
        self._recall(users)
        self._catalog_changes(users[0])
        self._latency()
        self._model("2", seed=1, dims=64)
        self._roll()

    def _stop(self) -> None:
        with self.step("stop the daemons") as notes:
            codes = [(" ".join(p.args), p.stop()) for p in self.processes]
            notes.append(", ".join(f"`esrec {a}` exit {c}" for a, c in codes) or "none")
            self._check(all(code == 0 for _, code in codes),
                        f"a daemon did not stop cleanly: {codes}")

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise DemoFailed(" ".join(message.split()))  # one line: it is a table cell

    def _data(self) -> None:
        with self.step("synthetic catalog, users and interactions -> MongoDB") as notes:
            self.dataset = generate(SynthConfig(items=self.size.items, users=self.size.users))
            write_mongo(self.dataset, self.db, Collections())
            notes.append(f"{len(self.dataset.items)} items, {len(self.dataset.users)} users, "
                         f"{len(self.dataset.interactions)} interactions")

    def _model(self, version: str, seed: int, dims: int) -> None:
        ref = f"demo-two-tower@{version}"
        with self.step(f"train and publish {ref}") as notes:
            config = TrainConfig(epochs=self.size.epochs, dims=dims, seed=seed)
            result = train(self.dataset, config, on_epoch=print_epoch)
            summary = training_summary(result, config)
            directory = self.out / "models" / version
            result.export(directory, "demo-two-tower", version, summary)
            self.registry.publish(directory)
            self.record.training[ref] = summary
            notes.append(f"HR@100 {summary['model']['hr@100']:.3f} vs most popular "
                         f"{summary['most_popular']['hr@100']:.3f}")

    def _serve_v1(self) -> None:
        with self.step("build demo-two-tower@1 (backfill) and promote it") as notes:
            started = time.monotonic()
            samples: list[tuple[float, float]] = [(0.0, 0.0)]  # acknowledged documents

            def sample(done: int, _total: int) -> None:
                samples.append((time.monotonic() - started, done))

            report = self.versions.build("demo-two-tower@1", on_progress=sample)
            self.record.throughput["backfill v1"] = samples
            self.versions.promote("demo-two-tower@1")
            self._check(report.done and report.documents == self.size.items,
                        f"backfill indexed {report.documents} of {self.size.items} items")
            notes.append(f"{report.documents} documents in {report.index}")
        with self.step("start `esrec indexer run` and `esrec recall events`") as notes:
            logs = self.out / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self._topics()
            indexer = Background(self.env, logs / "indexer.log", "indexer", "run")
            self.processes.append(indexer)
            events = Background(self.env, logs / "events.log", "recall", "events")
            self.processes.append(events)
            indexer.wait_for("indexer starting")
            events.wait_for("consuming user events")
            notes.append(f"logs in {logs}")

    def _topics(self) -> None:
        admin = KafkaAdminClient(**kafka_options(self.settings.kafka))
        topics = self.settings.kafka.topics
        for name in (topics.user_events, topics.dead_letters):
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, 2, 1)])
        admin.close()

    def _events(self) -> list[str]:
        users = [str(user["_id"]) for user in self.dataset.users[:3]]
        with self.step("user events -> Kafka -> user state") as notes:
            producer = KafkaProducer(**kafka_options(self.settings.kafka), acks="all")
            self.clicked: dict[str, list[str]] = {}
            for n, user in enumerate(users):
                category = f"cat{n + 1}"
                items = [str(d["_id"]) for d in self.db.items.find({"category": category})
                         .limit(5)]
                self.clicked[user] = items
                for item in items:
                    event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item,
                             "type": "click", "ts": datetime.now(UTC).isoformat()}
                    producer.send(self.settings.kafka.topics.user_events, key=user.encode(),
                                  value=json.dumps(event).encode())
            producer.flush()
            producer.close()
            states = self.db[self.settings.mongo.collections.user_state]
            deadline = time.monotonic() + SEE_WITHIN_S
            while any(not self._has_recent(states, u, self.clicked[u]) for u in users):
                self._check(time.monotonic() < deadline, "user state did not reflect the "
                            f"events within {SEE_WITHIN_S:g}s")
                time.sleep(0.2)
            notes.append(f"{sum(map(len, self.clicked.values()))} clicks for {', '.join(users)}")
        return users

    @staticmethod
    def _has_recent(states: MongoCollection, user: str, items: list[str]) -> bool:
        state = states.find_one({"_id": user}) or {}
        return set(items) <= {entry["item_id"] for entry in state.get("recent", [])}

    def _recaller(self) -> Recaller:
        return Recaller(self.es, self.db, self.registry, self.settings)

    def _recall(self, users: list[str]) -> None:
        with self.step("recall with provenance") as notes:
            recaller = self._recaller()
            for user in users:
                response = recaller.recall({"user_id": user, "k": 10})
                channels = {s.channel for c in response.candidates for s in c.sources}
                self._check(bool(response.candidates) and "knn" in channels,
                            f"recall for {user} has no kNN candidates: {channels}")
                self._check(not {c.item_id for c in response.candidates}
                            & set(self.clicked[user]), f"recall for {user} returned seen items")
                self._table(f"recall for {user}", response)
            notes.append(f"{len(users)} users, kNN + i2i + tags + hot + fresh fused")

    def _table(self, title: str, response: RecallResponse) -> None:
        from esrec.cli.recall import print_table

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            print_table(response, 10)
        click.echo(buffer.getvalue(), err=True)
        self.record.tables.append((title, buffer.getvalue()))

    def _catalog_changes(self, user: str) -> None:
        with self.step("catalog changes -> index -> recall") as notes:
            recaller = self._recaller()
            before = recaller.recall({"user_id": user, "k": 10})
            gone = before.candidates[0].item_id
            template = self.db.items.find_one({"_id": self.clicked[user][0]}) or {}
            fresh = [f"new-{uuid.uuid4().hex[:8]}" for _ in range(3)]
            self.db.items.insert_many([{**template, "_id": item, "title": f"new {item}",
                                        "created_at": datetime.now(UTC)} for item in fresh])
            self.db.items.delete_one({"_id": gone})
            request = {"user_id": user, "k": 50, "channels": {"knn": 1.0, "fresh": 1.0}}
            deadline = time.monotonic() + SEE_WITHIN_S
            while True:
                after = recaller.recall(request)
                returned = {c.item_id for c in after.candidates}
                if set(fresh) <= returned and gone not in returned:
                    break
                self._check(time.monotonic() < deadline, "recall did not reflect the catalog "
                            f"changes within {SEE_WITHIN_S:g}s")
                time.sleep(0.25)
            self._table(f"recall for {user} after the catalog changes (knn + fresh)", after)
            notes.append(f"3 new items recalled, deleted {gone} gone")
            self._burst(notes)

    def _burst(self, notes: list[str]) -> None:
        """A burst of catalog updates through the live daemon, its throughput sampled."""
        count, samples = 2000, []
        base = scrape_counter(self.metrics_port, "esrec_indexer_events_total")
        ids = [str(item["_id"]) for item in self.db.items.find({}, {"_id": 1}).limit(count)]
        count = len(ids)
        started = time.monotonic()
        writer = threading.Thread(target=lambda: [self.db.items.bulk_write(
            [UpdateOne({"_id": item}, {"$set": {"title": f"updated {start + n}"}})
             for n, item in enumerate(ids[start:start + 100])])
            for start in range(0, len(ids), 100)])
        writer.start()
        while True:
            done = scrape_counter(self.metrics_port, "esrec_indexer_events_total") - base
            samples.append((time.monotonic() - started, done))
            if done >= count:
                break
            self._check(time.monotonic() - started < 120, f"the daemon indexed {done} of "
                        f"{count} updates in 120s")
            time.sleep(0.25)
        writer.join()
        self.record.throughput["live updates"] = samples
        notes.append(f"{count} live updates indexed in {samples[-1][0]:.1f}s")

    def _latency(self) -> None:
        with self.step("recall latency") as notes:
            recaller = self._recaller()
            everyone = [str(user["_id"]) for user in self.dataset.users]
            for n in range(self.size.latency_requests):
                response = recaller.recall({"user_id": everyone[n % len(everyone)]})
                self.record.latencies_ms.append(response.took_ms)
            ordered = sorted(self.record.latencies_ms)
            notes.append(f"p50 {ordered[len(ordered) // 2]:.1f} ms over {len(ordered)} "
                         "requests")

    def _status(self, title: str) -> None:
        status = esrec(self.env, "models", "status")
        self._check(status.returncode == 0, _failures(status))
        click.echo(status.stdout, err=True)
        self.record.tables.append((title, status.stdout))

    def _roll(self) -> None:
        with self.step("roll demo-two-tower@2 (build, validate, promote, probe, watch)") as notes:
            self._status("models status before the roll")
            # nobody asks recall during the roll here: a short watch, kept on no traffic
            rolled = esrec(self.env, "models", "roll", "demo-two-tower@2", "--watch-s", "3")
            click.echo(rolled.stdout, err=True)
            self.record.tables.append(("esrec models roll demo-two-tower@2", rolled.stdout))
            self._check(rolled.returncode == 0, "roll failed: " + _failures(rolled))
            self._status("models status after the roll")
            answer = self._recaller().recall({"user_id": self.dataset.users[0]["_id"]})
            self._check(answer.model == "demo-two-tower@2", f"recall answers with {answer.model}")
            notes.append(f"recall now answers from {answer.index}")
        with self.step("roll back to demo-two-tower@1") as notes:
            back = esrec(self.env, "models", "rollback")
            self._check(back.returncode == 0, _failures(back))
            self._status("models status after the rollback")
            answer = self._recaller().recall({"user_id": self.dataset.users[0]["_id"]})
            self._check(answer.model == "demo-two-tower@1", f"recall answers with {answer.model}")
            notes.append(back.stdout.strip())
