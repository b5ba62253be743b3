"""Backfill: fill a new index from a scan of the collection, then hand over to the stream.

    T = the cluster's operation time now  ->  stream position of the index := T
    embedded:    SnapshotSource (pages by _id, version (T, 0)) -> drive -> save the last
                 _id, in order; the stream then replays every change from T on, each with
                 a higher version
    distributed: the scan's pages as chunks (their documents) -> the backfill topic ->
                 every worker writes its share (version (T, 0)) -> the build waits for
                 all chunks; the workers feed the index the item-changes topic from T on

A crash resumes the scan after the last saved _id with the same T. Progress goes to a
callback (the CLI draws a bar with it); the core prints nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch

from indexer.changes import Batch, SnapshotPosition
from indexer.checkpoint import Checkpoints
from indexer.driver import drive
from indexer.messages import chunks_of, encode_chunk
from indexer.offsets import TopicOffsets
from indexer.pipeline import Pipeline, Target
from indexer.settings import IndexerConfig, IndexerSettings
from indexer.snapshot import Pace, SnapshotScan, SnapshotSource
from indexer.source import server_time
from runtime.clients import MongoCollection, ensure_topic, kafka_options, topic_offsets

# (documents handed out so far, estimated total) after every saved page
OnProgress = Callable[[int, int], None]


@dataclass
class BackfillReport:
    index: str
    operation_time: Timestamp
    documents: int
    resumed_from: Any
    done: bool


def backfill(items: MongoCollection, es: Elasticsearch, pipeline: Pipeline,
             checkpoints: Checkpoints, index: str, stop: threading.Event,
             settings: IndexerSettings, on_progress: OnProgress | None = None) -> BackfillReport:
    """Fill ``index`` from a scan of ``items`` (resuming a started backfill)."""
    saved = checkpoints.backfill_state(index)
    if saved is not None and saved[1]:
        position = saved[0]
        return BackfillReport(index, position.operation_time, position.documents, None, True)
    start = checkpoints.start_backfill(index, server_time(items))
    total = items.estimated_document_count()
    last = start

    def save(batch: Batch) -> None:
        nonlocal last
        assert isinstance(batch.position, SnapshotPosition)
        last = batch.position
        checkpoints.save_backfill(index, last)
        if on_progress is not None:
            on_progress(last.documents, max(total, last.documents))

    source = SnapshotSource(items, start, Pace(settings.backfill_max_docs_per_s, stop))
    try:
        done = drive(source, pipeline, save, stop, settings)
    finally:
        source.close()
    if done:
        es.indices.refresh(index=index)  # searchable now, not at the next tick
        checkpoints.finish_backfill(index)
    return BackfillReport(index, start.operation_time, last.documents,
                          start.last_id if start.documents else None, done)


def backfill_via_workers(items: MongoCollection, es: Elasticsearch, checkpoints: Checkpoints,
                         target: Target, stop: threading.Event, settings: IndexerConfig,
                         on_progress: OnProgress | None = None) -> BackfillReport:
    """Fill ``target``'s index through the workers: publish the scan's pages in chunks
    to the backfill topic, each written by whichever worker gets it, then wait until every
    chunk is written. Resumable: publishing goes on after the last chunk sent, and chunks
    are idempotent. The index's live changes reach it through the workers from T on."""
    from kafka import KafkaProducer

    index, indexer, kafka = target.index, settings.indexer, settings.kafka
    saved = checkpoints.backfill_state(index)
    if saved is not None and saved[1]:
        return BackfillReport(index, saved[0].operation_time, saved[0].documents, None, True)
    start = checkpoints.start_backfill(index, server_time(items))
    for topic in (kafka.topics.item_changes, kafka.topics.item_backfill):
        ensure_topic(kafka, topic, indexer.partitions)
    # the workers pick the index up at T: the first change message at or after it
    at_ms = start.operation_time.time * 1000
    TopicOffsets(checkpoints.collection, kafka.topics.item_changes).set_start(
        index, topic_offsets(kafka, kafka.topics.item_changes, at_ms))
    published, _ = checkpoints.chunks(index)
    producer = KafkaProducer(**kafka_options(kafka), acks="all",
                             max_request_size=indexer.max_message_bytes + 64 * 1024)
    scan = SnapshotScan(items, start, Pace(indexer.backfill_max_docs_per_s, stop))
    # chunks in turn over the partitions: every worker gets its share (a hash of the
    # chunk numbers gave some partitions twice the chunks of others)
    partitions = sorted(producer.partitions_for(kafka.topics.item_backfill))
    try:
        while not stop.is_set():
            page = scan.take(indexer.batch_max_docs)
            if not page:
                break
            sent = [producer.send(kafka.topics.item_backfill, key=str(chunk.number).encode(),
                                  value=encode_chunk(chunk),
                                  partition=partitions[chunk.number % len(partitions)])
                    for chunk in chunks_of(page, index, target.artifact.manifest.ref,
                                           start.operation_time, published,
                                           indexer.max_message_bytes)]
            for future in sent:  # acknowledged, or the error raised, before it counts
                future.get(timeout=30)
            published += len(sent)
            checkpoints.save_backfill(index, scan.position, chunks=published)
    finally:
        scan.close()
        producer.close()
    position = scan.position
    while not stop.is_set():
        _, written = checkpoints.chunks(index)
        if on_progress is not None:
            on_progress(written, published)
        if written >= published:
            es.indices.refresh(index=index)
            checkpoints.finish_backfill(index)
            return BackfillReport(index, start.operation_time, position.documents,
                                  start.last_id if start.documents else None, True)
        stop.wait(0.5)
    return BackfillReport(index, start.operation_time, position.documents,
                          start.last_id if start.documents else None, False)
