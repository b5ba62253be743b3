"""Writers: batches written concurrently, their checkpoints saved strictly in order.

    reader: poll -> prepare -> submit(item)  [blocks when WRITE_AHEAD items wait: the
                                              backpressure when Elasticsearch is slow]
    WRITERS threads: write(item) -> finished[n] -> save(item) for n, n+1, ... in order

Batches may land out of order (every write is version-guarded, so that is harmless), but
a batch's checkpoint is saved only once it and every batch before it are written. The
first error stops the writers and is raised in the reader's thread at its next submit
(or at close); what was not saved is replayed by the next run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")

WRITE_AHEAD = 2  # items read and embedded ahead of those being written
WRITERS = 2  # concurrent _bulk requests: lets Elasticsearch work while the next is encoded


class Writers(Generic[Item]):
    def __init__(self, write: Callable[[Item], None], save: Callable[[Item], None],
                 threads: int = WRITERS, ahead: int = WRITE_AHEAD) -> None:
        self.write = write
        self.save = save
        self.queue: queue.Queue[tuple[int, Item] | None] = queue.Queue(maxsize=ahead)
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.finished: dict[int, Item] = {}
        self.submitted = self.saved = 0
        self.closed = False
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"esrec-writer-{i}")
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (entry := self.queue.get()) is not None:
            sequence, item = entry
            if self.error is not None:
                continue
            try:
                self.write(item)
                with self.lock:
                    self.finished[sequence] = item
                    while self.saved in self.finished:
                        self.save(self.finished.pop(self.saved))
                        self.saved += 1
            except BaseException as error:  # handed to the reader thread, re-raised there
                self.error = error

    def submit(self, item: Item) -> None:
        if self.closed:
            raise RuntimeError("submit after close: the item would never be written")
        entry = (self.submitted, item)
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(entry, timeout=0.1)
                self.submitted += 1
                return
            except queue.Full:
                continue

    @property
    def pending(self) -> int:
        """Items submitted and not yet saved."""
        return self.submitted - self.saved

    def close(self) -> None:
        """Finish what was submitted (drain), then stop the threads (once)."""
        if self.closed:
            return
        self.closed = True
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error
