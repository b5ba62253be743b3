"""Kafka features the user-event consumer and the indexer scale-out rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from runtime.clients import group_consumer
from runtime.settings import KafkaSettings

PARTITIONS = 4
POLL_MS = 200


def _topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, count: int) -> dict[bytes, int]:
    """Produce ``count`` keyed messages; returns the partition each key went to."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    partitions: dict[bytes, int] = {}
    for i in range(count):
        key = f"item-{i % 10}".encode()
        meta = producer.send(topic, key=key, value=str(i).encode()).get(timeout=10)
        assert partitions.setdefault(key, meta.partition) == meta.partition
    producer.flush()
    producer.close()
    return partitions


def _consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    """A group member as esrec makes one (runtime.clients.group_consumer: subscribed once
    its metadata knows the topic's partitions; the topic here has records already)."""
    consumer: KafkaConsumer = group_consumer(
        KafkaSettings(bootstrap_servers=[bootstrap]), [topic], group,
        auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
    return consumer


def test_keyed_messages_keep_their_partition(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("keyed")
    _topic(kafka_bootstrap, topic)
    partitions = _produce(kafka_bootstrap, topic, 40)
    assert len(set(partitions.values())) > 1  # keys spread over partitions


def test_group_splits_partitions_and_resumes_from_commit(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("group"), unique("g")
    _topic(kafka_bootstrap, topic)
    _produce(kafka_bootstrap, topic, 40)

    # Each member polls in its own thread: a rebalance blocks a member's poll until every
    # member has rejoined, so one thread polling both would stall the group.
    members = [_consumer(kafka_bootstrap, group, topic) for _ in range(2)]
    stop = threading.Event()

    def keep_polling(consumer: KafkaConsumer) -> None:
        while not stop.is_set():
            consumer.poll(POLL_MS, max_records=1)

    threads = [threading.Thread(target=keep_polling, args=(m,), daemon=True) for m in members]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a, b = (m.assignment() for m in members)
            if a and b and len(a | b) == PARTITIONS:
                break
            time.sleep(0.2)
        assert a and b and not (a & b)
        assert len(a | b) == PARTITIONS
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for member in members:
            member.close()

    reader = _consumer(kafka_bootstrap, group, topic)
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 25:
            for records in reader.poll(POLL_MS, max_records=25 - len(seen)).values():
                seen.extend(int(r.value) for r in records)
        reader.commit()
    finally:
        reader.close()
    assert len(seen) == 25

    resumed = _consumer(kafka_bootstrap, group, topic)
    rest: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(rest) < 15:
            for records in resumed.poll(POLL_MS).values():
                rest.extend(int(r.value) for r in records)
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = sum(resumed.committed(tp) or 0 for tp in partitions)
    finally:
        resumed.close()
    assert sorted(seen + rest) == list(range(40))  # nothing replayed, nothing skipped
    assert committed == 25
