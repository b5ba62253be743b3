"""A group consumer on the local Kafka: subscribed only once its metadata knows the
topic's partitions, so a topic created a moment ago is never assigned to no one."""

from __future__ import annotations

import time
import uuid

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from esrec.settings import Settings
from runtime.clients import group_consumer, kafka_options


def test_each_partition_of_a_topic_created_a_moment_ago_is_assigned(settings: Settings) -> None:
    admin = KafkaAdminClient(**kafka_options(settings.kafka))
    try:
        for attempt in range(3):
            topic = f"fresh-{uuid.uuid4().hex[:8]}"
            admin.create_topics([NewTopic(topic, 3, 1)])
            consumer = None
            deadline = time.monotonic() + 30
            while consumer is None:  # as esrec's consumers do: retried until it is known
                try:
                    consumer = group_consumer(settings.kafka, [topic], f"g-{topic}")
                except KafkaError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            try:
                while not consumer.assignment():
                    assert time.monotonic() < deadline, attempt
                    consumer.poll(200)
                assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2}, attempt
            finally:
                consumer.close()
    finally:
        admin.close()

