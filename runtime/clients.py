"""Server clients built from settings: the one place that turns settings into connections,
and client errors into esrec's error kinds."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from runtime.errors import EsrecError, Refused, Unavailable
from runtime.settings import ElasticsearchSettings, KafkaSettings, MongoSettings

Document = dict[str, Any]
MongoDatabase = Database[Document]
MongoCollection = Collection[Document]


# numpy arrays go in as they are; a naive datetime is UTC (catalog documents are decoded
# with naive datetimes: indexer.changes.document_codec) and is written with its offset
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC


class UtcOrjsonSerializer(OrjsonSerializer):
    """Request bodies through orjson, naive datetimes as UTC."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=_ORJSON_OPTIONS)


class OrjsonNdjsonSerializer(NdjsonSerializer):
    """_bulk and _msearch bodies through orjson: ~4x faster than json for float vectors.
    (orjson writes NaN as null; esrec rejects NaN before it gets here.)"""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=_ORJSON_OPTIONS)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


def elasticsearch_client(settings: ElasticsearchSettings, **overrides: Any) -> Elasticsearch:
    """An Elasticsearch client; ``overrides`` are passed through (e.g. ``max_retries=0``)."""
    options: dict[str, Any] = {
        "serializers": {"application/json": UtcOrjsonSerializer(),
                        "application/x-ndjson": OrjsonNdjsonSerializer()},
        "hosts": list(settings.hosts),
        "request_timeout": settings.request_timeout_s,
        "verify_certs": settings.verify_certs,
    }
    if settings.ca_certs is not None:
        options["ca_certs"] = str(settings.ca_certs)
    if settings.api_key is not None:
        options["api_key"] = settings.api_key.get_secret_value()
    if settings.username is not None and settings.password is not None:
        options["basic_auth"] = (settings.username, settings.password.get_secret_value())
    options.update(overrides)
    return Elasticsearch(**options)


def mongo_client(settings: MongoSettings, **overrides: Any) -> MongoClient[Document]:
    """A MongoDB client with the configured server-selection timeout."""
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": settings.server_selection_timeout_ms,
        "tz_aware": True,
    }
    options.update(overrides)
    return MongoClient(settings.uri.get_secret_value(), **options)


def kafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments shared by kafka-python producers, consumers and admins."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.ssl_cafile is not None:
        options["ssl_cafile"] = str(settings.ssl_cafile)
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def ensure_topic(settings: KafkaSettings, name: str, partitions: int) -> None:
    """Create a topic unless it is there (with ``partitions`` partitions)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**kafka_options(settings))
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def group_consumer(settings: KafkaSettings, topics: list[str], group_id: str,
                   listener: Any = None, **options: Any) -> Any:
    """A KafkaConsumer of ``group_id`` subscribed to ``topics`` once its metadata knows
    their partitions (raises KafkaError until then, for the caller's retry).

    The group leader assigns only the topics its metadata knows: one created a moment
    ago (or not yet) may be missing from it, and its partitions would go to no one until
    the next metadata refresh (kafka-python issue 2377)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    consumer = KafkaConsumer(**kafka_options(settings), group_id=group_id, **options)
    for topic in topics:
        if not consumer.partitions_for_topic(topic):
            consumer.close()
            raise KafkaError(f"no partitions of {topic} in the metadata yet: does it exist?")
    consumer.subscribe(topics, listener=listener)
    return consumer


def topic_offsets(settings: KafkaSettings, topic: str,
                  at_ms: int | None = None) -> dict[int, int]:
    """Per partition of ``topic``: where it ends now, or (``at_ms``, epoch milliseconds)
    the first offset of a message at or after that time, its end where there is none."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_options(settings))
    try:
        partitions = [TopicPartition(topic, p)
                      for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
        found = consumer.offsets_for_times(dict.fromkeys(partitions, at_ms)) \
            if at_ms is not None else {}
        return {tp.partition: int(found[tp].offset if found.get(tp) else ends[tp])
                for tp in partitions}
    finally:
        consumer.close()


# the Elasticsearch and MongoDB clients' error bases; Kafka's is known by its module, so
# that a process that never talks to Kafka never imports its client (~60 ms of start-up)
SERVER_ERRORS: tuple[type[Exception], ...] = (ApiError, TransportError, PyMongoError)


def server_error(error: BaseException) -> EsrecError | None:
    """A client library's error as one of esrec's kinds, or None if it is none of theirs:
    a server that cannot be reached (or is overloaded) is unavailable; a request it
    refused is refused. Every surface (CLI exit codes, HTTP statuses) reports through it."""
    if isinstance(error, ApiError):
        status = error.meta.status
        kind = Unavailable if status == 429 or status >= 500 else Refused
        return kind(f"Elasticsearch answered {status}: {error.message}")
    if isinstance(error, TransportError):
        return Unavailable(f"Elasticsearch is unreachable: {error.message}",
                           "check ESREC_ES__HOSTS and that the cluster is up")
    if isinstance(error, OperationFailure):
        return Refused(f"MongoDB refused the operation: {error.details.get('errmsg', error)}"
                       if error.details else f"MongoDB refused the operation: {error}")
    if isinstance(error, PyMongoError):
        return Unavailable(f"MongoDB is unreachable: {str(error).split(', Timeout:')[0]}",
                           "check ESREC_MONGO__URI and that the replica set is up")
    kafka_errors = sys.modules.get("kafka.errors")  # no Kafka client loaded: no Kafka error
    if kafka_errors is not None and isinstance(error, kafka_errors.KafkaError):
        return Unavailable(f"Kafka is unreachable: {type(error).__name__}: {error}",
                           "check ESREC_KAFKA__BOOTSTRAP_SERVERS and that a broker is up")
    return None
