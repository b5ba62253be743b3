"""`esrec doctor`: can esrec work with the configured servers?

Each check connects with the real settings and exercises exactly the capabilities esrec
relies on, on throwaway names it cleans up, and turns any failure into one plain line.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from elastic_transport import TransportError
from elasticsearch import ApiError
from pymongo.errors import ConnectionFailure, PyMongoError

from esrec.settings import Settings
from indexer.changes import Position
from indexer.source import ChangeStreamSource, server_time
from runtime.clients import elasticsearch_client, kafka_options, mongo_client
from runtime.settings import mask_url

DOCTOR_TIMEOUT_S = 5.0  # a healthy local or in-cluster server answers well within this
MIN_ES_MAJOR = 8  # dense_vector kNN search with filters and num_candidates arrived in 8.x


@dataclass
class CheckResult:
    server: str
    ok: bool = False
    version: str = "?"
    capabilities: list[str] = field(default_factory=list)
    problem: str = ""
    fix: str = ""  # what to do about the problem, where esrec knows


def _unreachable_fix(variable: str, value: str) -> str:
    """The fix for a server that did not answer: the setting it came from, or a stack."""
    return (f"check {variable} (now {value}); for local servers run `esrec stack up` and "
            "export the ESREC_* lines it prints")


def _probe_name() -> str:
    return f"esrec-doctor-{uuid.uuid4().hex[:8]}"


def check_elasticsearch(settings: Settings) -> CheckResult:
    result = CheckResult("elasticsearch")
    es = elasticsearch_client(settings.es, request_timeout=DOCTOR_TIMEOUT_S, max_retries=0)
    index = _probe_name()
    try:
        result.version = es.info()["version"]["number"]
        if int(result.version.split(".")[0]) < MIN_ES_MAJOR:
            result.problem = f"Elasticsearch {result.version} is too old; esrec needs 8.x or newer"
            return result
        es.indices.create(
            index=index,
            mappings={
                "_meta": {"model_version": "doctor"},
                "properties": {
                    "vector": {"type": "dense_vector", "dims": 3, "index": True,
                               "similarity": "cosine"},
                    "tag": {"type": "keyword"},
                },
            },
        )
        es.index(index=index, id="a", document={"vector": [1, 0, 0], "tag": "x"})
        es.index(index=index, id="b", document={"vector": [0, 1, 0], "tag": "y"}, refresh=True)
        result.capabilities.append("dense_vector")
        hits = es.search(
            index=index,
            knn={"field": "vector", "query_vector": [0.1, 1, 0], "k": 1, "num_candidates": 10,
                 "filter": {"term": {"tag": "y"}}},
        )["hits"]["hits"]
        if [hit["_id"] for hit in hits] != ["b"]:
            result.problem = f"kNN search with a filter returned {hits!r}, expected document b"
            return result
        result.capabilities.append("knn")
        alias = f"{index}-alias"
        es.indices.update_aliases(actions=[{"add": {"index": index, "alias": alias}}])
        if list(es.indices.get_alias(name=alias)) != [index]:
            result.problem = "an alias did not resolve to its index"
            return result
        result.capabilities.append("aliases")
        result.ok = True
    except ApiError as error:
        result.problem = f"{error.meta.status} {error.message}"
    except TransportError as error:
        hosts = ", ".join(map(mask_url, settings.es.hosts))  # a password stays out
        result.problem = f"cannot connect to {hosts}: {error.message}"
        result.fix = _unreachable_fix("ESREC_ES__HOSTS", hosts)
    finally:
        with contextlib.suppress(ApiError, TransportError):  # any problem is recorded above
            es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
    return result


def check_mongodb(settings: Settings) -> CheckResult:
    result = CheckResult("mongodb")
    client = mongo_client(settings.mongo, serverSelectionTimeoutMS=int(DOCTOR_TIMEOUT_S * 1000))
    try:
        result.version = client.server_info()["version"]
        hello = client.admin.command("hello")
        if "setName" not in hello:
            result.problem = (
                "this is a standalone mongod: change streams need a replica set. Start mongod "
                "with --replSet rs0 and run rs.initiate() once (a single-node set is enough)"
            )
            return result
        result.capabilities.append(f"replica set {hello['setName']}")
        probe = client[settings.mongo.database][_probe_name()]
        # the stream as the indexer opens it
        source = ChangeStreamSource(probe, Position(None, server_time(probe), 0), await_ms=200)
        try:
            probe.insert_one({"probe": True})
            changes = source.poll(1, 1 << 20, 2.0).changes
        finally:
            source.close()
            probe.drop()
        if not changes or changes[0].op != "upsert":
            result.problem = "a change stream opened but did not deliver an insert"
            return result
        result.capabilities.append("change streams")
        result.ok = True
    except PyMongoError as error:
        result.problem = str(error).split(", Timeout:")[0].split("\n")[0]
        if isinstance(error, ConnectionFailure):  # server selection timed out too
            result.fix = _unreachable_fix("ESREC_MONGO__URI",
                                          mask_url(settings.mongo.uri.get_secret_value()))
    finally:
        client.close()
    return result


def check_kafka(settings: Settings) -> CheckResult:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError

    result = CheckResult("kafka")
    servers = ", ".join(settings.kafka.bootstrap_servers)
    timeout_ms = int(DOCTOR_TIMEOUT_S * 1000)
    try:
        admin = KafkaAdminClient(
            **kafka_options(settings.kafka),
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except KafkaError as error:
        result.problem = f"no Kafka broker answered at {servers}: {type(error).__name__}"
        result.fix = _unreachable_fix("ESREC_KAFKA__BOOTSTRAP_SERVERS", servers)
        return result
    topic = _probe_name()
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        if topic not in admin.list_topics():
            result.problem = f"topic {topic} was created but is not listed"
            return result
        result.capabilities.append("create topic")
        producer = KafkaProducer(**kafka_options(settings.kafka), acks="all",
                                 request_timeout_ms=timeout_ms)
        try:
            producer.send(topic, key=b"k", value=b"v").get(timeout=DOCTOR_TIMEOUT_S)
            result.version = ".".join(map(str, producer.config["api_version"]))
        finally:
            producer.close(timeout=DOCTOR_TIMEOUT_S)
        result.capabilities.append("keyed produce acks=all")
        admin.delete_topics([topic])
        result.ok = True
    except KafkaError as error:
        result.problem = f"{type(error).__name__}: {error}"
    finally:
        admin.close()
    return result


CHECKS: dict[str, Callable[[Settings], CheckResult]] = {
    "elasticsearch": check_elasticsearch,
    "mongodb": check_mongodb,
    "kafka": check_kafka,
}


def run_checks(settings: Settings, servers: list[str] | None = None) -> list[CheckResult]:
    """Every check at once (each waits up to DOCTOR_TIMEOUT_S on a server that does not
    answer), the results in the order asked."""
    names = servers or list(CHECKS)
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(lambda name: _run(name, settings), names))


def _run(name: str, settings: Settings) -> CheckResult:
    try:
        return CHECKS[name](settings)
    except Exception as error:  # a client bug or an odd server reply: report, do not crash
        return CheckResult(name, problem=f"unexpected {type(error).__name__}: {error}")
