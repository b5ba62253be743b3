"""`esrec recall events` losing its partitions while it holds a batch (an outage longer than
max.poll.interval): the commit the group refuses is counted, never retried forever, and
the batch is consumed again once the consumer rejoins. On the local Kafka."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pymongo import MongoClient

from esrec.settings import Settings
from recall.events import EventConsumer
from runtime.clients import group_consumer

pytestmark = pytest.mark.slow


def test_a_commit_refused_after_a_rebalance_is_counted_and_the_batch_comes_again(
        settings: Settings, mongo_client: MongoClient) -> None:
    topic = settings.kafka.topics.user_events
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    producer.send(topic, b"one record").get(10)
    producer.close()
    events = EventConsumer(settings, mongo_client[settings.mongo.database], threading.Event())
    consumer = group_consumer(settings.kafka, [topic], settings.recall.consumer_group,
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              max_poll_interval_ms=2000, heartbeat_interval_ms=500)
    try:
        deadline = time.monotonic() + 60
        while not (batch := consumer.poll(500)):
            assert time.monotonic() < deadline
        time.sleep(6)  # 3x max_poll_interval_ms: the group takes the partition back
        events._commit(consumer)  # refused, counted, not raised
        assert events.metrics.rebalanced._value.get() == 1
        again = consumer.poll(500)
        while not again:  # the next polls join again and read from the last commit
            assert time.monotonic() < deadline
            again = consumer.poll(500)
        first = [r.offset for records in batch.values() for r in records]
        assert [r.offset for records in again.values() for r in records] == first
    finally:
        consumer.close()
