"""MongoDB down when each daemon starts (`esrec indexer run`, `esrec recall events`,
`esrec recall serve`): each stays up, says what it waits for, and works once MongoDB is
reachable, with no restart. MongoDB is cut off by a loopback proxy (directConnection, so
every connection goes through it), not stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from esrec.ports import free_port
from esrec.settings import Settings
from indexer.lifecycle import Versions
from tests.indexer.helpers import cli_env, services, wait_caught_up
from tests.processes import EsrecProcess, get_json
from tests.proxy import TcpProxy
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate

pytestmark = pytest.mark.slow
CATALOG = SynthConfig(items=200, users=5, topics=5, mean_interactions=2, seed=8)
WAIT_S = 120.0


def _until(check, what: str, processes: list[EsrecProcess]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not check():
        for process in processes:
            assert process.alive(), f"{process.args} ended:\n{process.text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} within {WAIT_S}s:\n" + "\n".join(
            process.text()[-1500:] for process in processes)
        time.sleep(0.3)


def _post(url: str, body: dict[str, object]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def test_every_daemon_waits_for_mongodb_then_works(
        settings: Settings, es: Elasticsearch, mongo_url: str, artifact_dir: Path,
        tmp_path: Path) -> None:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build("test-model@1").done
    versions.promote("test-model@1")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(settings.kafka.topics.user_events, 1, 1)])
    admin.close()

    real = urlsplit(mongo_url)
    proxy = TcpProxy(real.hostname or "127.0.0.1", real.port or 27017)
    proxy.cut()  # MongoDB is down before anything starts
    ports = {name: free_port() for name in ("indexer", "events", "serve")}
    env = cli_env(settings, ESREC_MONGO__URI=f"mongodb://127.0.0.1:{proxy.port}/"
                  "?directConnection=true", ESREC_MONGO__SERVER_SELECTION_TIMEOUT_MS="1000",
                  ESREC_INDEXER__RETRY_MAX_DELAY_S="2", ESREC_RECALL__RETRY_MAX_DELAY_S="2",
                  ESREC_INDEXER__METRICS_PORT=str(ports["indexer"]),
                  ESREC_RECALL__EVENTS_METRICS_PORT=str(ports["events"]))
    daemons = [EsrecProcess(env, tmp_path / "indexer.log", "indexer", "run"),
               EsrecProcess(env, tmp_path / "events.log", "recall", "events"),
               EsrecProcess(env, tmp_path / "serve.log", "recall", "serve", "--port",
                            str(ports["serve"]))]
    try:
        for daemon in daemons:
            daemon.start()
        indexer_health = f"http://127.0.0.1:{ports['indexer']}/healthz"
        recall_url = f"http://127.0.0.1:{ports['serve']}/v1/recall"
        _until(lambda: _answers(indexer_health) == 503, "the indexer says it waits", daemons)
        body = get_json(indexer_health)[1]
        assert body["status"] == "degraded" and "servers" in body["problems"], body
        _until(lambda: _post(recall_url, {"user_id": "u1"}) == 503, "recall answers 503",
               daemons)
        event = {"event_id": uuid.uuid4().hex, "user_id": "u1", "item_id": "i3",
                 "type": "click", "ts": datetime.now(UTC).isoformat()}
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        producer.send(settings.kafka.topics.user_events, json.dumps(event).encode()).get(10)
        producer.close()
        events_health = f"http://127.0.0.1:{ports['events']}/healthz"
        _until(lambda: _answers(events_health) == 503, "the consumer says it waits", daemons)
        time.sleep(3)
        assert all(daemon.alive() for daemon in daemons)

        proxy.restore()  # MongoDB is back: everything must work without a restart
        states = svc.db[settings.mongo.collections.user_state]
        _until(lambda: states.find_one({"_id": "u1"}) is not None, "the event applied",
               daemons)
        _until(lambda: _answers(events_health) == 200, "the consumer ok again", daemons)
        _until(lambda: _post(recall_url, {"user_id": "u1"}) == 200, "recall answers",
               daemons)
        daemons[0].wait_for("indexer starting")
        index = svc.index_of("test-model@1") or ""
        svc.items.insert_one({"_id": "after-the-outage", "title": "new"})
        wait_caught_up(svc, index, time.time(), WAIT_S,
                       lambda: (daemons[0].alive(), daemons[0].text()[-3000:]))
        es.indices.refresh(index=index)
        assert es.exists(index=index, id="after-the-outage")
        assert _answers(indexer_health) == 200
    finally:
        for daemon in daemons:
            daemon.stop()
        proxy.cut()
    for daemon in daemons:
        assert "Traceback" not in daemon.text(), daemon.text()[-3000:]
    assert "retrying" in daemons[0].text() and "retrying mongodb" in daemons[1].text()


def _answers(url: str) -> int:
    try:
        return get_json(url)[0]
    except OSError:
        return 0


def test_a_one_shot_command_with_its_servers_down_exits_3_in_one_line() -> None:
    dead = free_port()
    env = {**os.environ, "ESREC_MONGO__URI": f"mongodb://127.0.0.1:{dead}/",
           "ESREC_ES__HOSTS": f"http://127.0.0.1:{dead}",
           "ESREC_MONGO__SERVER_SELECTION_TIMEOUT_MS": "500"}
    run = subprocess.run([sys.executable, "-m", "esrec", "indexer", "status"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3 and "is unreachable" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
