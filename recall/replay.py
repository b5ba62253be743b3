"""Replaying an interaction log as user events on the user-events topic, so that user
state (and measured popularity) is built by the real consumer, exactly as live events
would build it.

Each interaction becomes a ``UserEvent`` whose ``event_id`` is the interaction's stable
key: a replay sent twice is recognised by the consumer as the same events (within its
``seen_event_ids`` per user). Keyed by user id, so one user's events stay in order in
one partition. Events whose type the service does not know are mapped to ``click``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import get_args

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from recall.settings import RecallConfig
from recall.state import EventType, UserEvent
from runtime.clients import kafka_options
from runtime.errors import Unavailable
from towers.dataset import Interaction

KNOWN_TYPES = frozenset(get_args(EventType))
FALLBACK_TYPE = "click"
FLUSH_EVERY = 5000


class ReplayFailed(Unavailable):
    """Kafka refused or timed out some events of a replay."""


def as_event(interaction: Interaction) -> UserEvent:
    kind = interaction.event if interaction.event in KNOWN_TYPES else FALLBACK_TYPE
    return UserEvent(event_id=interaction.key, user_id=interaction.user_id,
                     item_id=interaction.item_id, type=kind,
                     ts=datetime.fromtimestamp(interaction.ts, UTC))


def replay(settings: RecallConfig, interactions: Iterable[Interaction],
           on_progress: Callable[[int], None] | None = None) -> int:
    """Send every interaction (acks=all); returns how many were sent."""
    producer = KafkaProducer(**kafka_options(settings.kafka), acks="all", linger_ms=20)
    sent = 0
    pending: list[FutureRecordMetadata] = []
    try:
        for interaction in interactions:
            event = as_event(interaction)
            pending.append(producer.send(settings.kafka.topics.user_events,
                                         key=event.user_id.encode(),
                                         value=event.model_dump_json().encode()))
            if len(pending) >= FLUSH_EVERY:
                sent += _confirm(producer, pending)
                if on_progress is not None:
                    on_progress(sent)
        sent += _confirm(producer, pending)
    finally:
        producer.close()
    return sent


def _confirm(producer: KafkaProducer, pending: list[FutureRecordMetadata]) -> int:
    """Flush, and fail loudly if Kafka did not take every event (a replay with holes
    would build user state that silently differs from the log)."""
    producer.flush()
    failed = [future for future in pending if not future.succeeded()]
    if failed:
        raise ReplayFailed(f"Kafka did not take {len(failed)} of {len(pending)} events: "
                           f"{failed[0].exception!r}",
                           "check the user-events topic and rerun (events are idempotent)")
    count = len(pending)
    pending.clear()
    return count
