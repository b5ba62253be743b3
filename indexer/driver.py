"""The one driver loop of every indexing job: the daemon, the backfill and the workers.

    until stop / turn() says to end / the source is exhausted:
        source.poll() -> pipeline.prepare (read and embed here) -> Writers.submit
    Writers: pipeline.commit on two threads -> save(batch) strictly in order

``save`` is the job's checkpoint: a stream position for the daemon, the snapshot's last
``_id`` for a backfill, the topics' offsets for a worker (indexer/worker.py). It runs
only after the batch and every earlier one are written. A batch that names its own
targets (a worker's backfill chunk) is written to those alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from indexer.changes import Batch, Source
from indexer.pipeline import Pipeline, Prepared
from indexer.settings import IndexerSettings
from indexer.writers import Writers

Item = tuple[Prepared | None, Batch]


def drive(source: Source, pipeline: Pipeline, save: Callable[[Batch], None],
          stop: threading.Event, settings: IndexerSettings,
          turn: Callable[[], bool] = lambda: False) -> bool:
    """Index from ``source`` until stopped, told to end by ``turn()`` (called once a loop),
    or the source runs out; True only in the last case, with every batch saved."""

    def write(item: Item) -> None:
        if item[0] is not None:
            pipeline.commit(item[0])

    writers: Writers[Item] = Writers(write, lambda item: save(item[1]))
    exhausted = False
    try:
        while not stop.is_set() and not turn():
            batch = source.poll(settings.batch_max_docs, settings.batch_max_bytes,
                                settings.batch_max_wait_ms / 1000)
            if batch.position is None:
                continue
            targets = pipeline.targets if batch.targets is None else batch.targets
            prepared = pipeline.prepare(batch.changes, targets) \
                if batch.changes and targets else None
            writers.submit((prepared, batch))
            if batch.last:
                exhausted = True
                break
    finally:
        writers.close()  # drains what was read: its writes, then its checkpoints
    return exhausted
