"""Writers save checkpoints strictly in order however the writes complete (unit, no server)."""

from __future__ import annotations

import threading
import time

import pytest

from indexer.writers import Writers


def test_out_of_order_writes_save_in_order() -> None:
    # item 0 is slow, 1 and 2 finish first: nothing may be saved before 0 is written
    gates = {n: threading.Event() for n in range(4)}
    written: list[int] = []
    saved: list[int] = []

    def write(item: int) -> None:
        gates[item].wait(5)
        written.append(item)

    writers: Writers[int] = Writers(write, saved.append, threads=3, ahead=4)
    for item in range(4):
        writers.submit(item)
    gates[1].set()
    gates[2].set()
    deadline = time.monotonic() + 5
    while len(written) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(written) == [1, 2] and saved == []  # written, not yet saved
    gates[0].set()
    gates[3].set()
    writers.close()
    assert saved == [0, 1, 2, 3] and writers.pending == 0


def test_a_failed_write_stops_saving_and_raises_in_the_reader() -> None:
    saved: list[int] = []

    def write(item: int) -> None:
        if item == 1:
            raise RuntimeError("bulk refused")

    writers: Writers[int] = Writers(write, saved.append, threads=1, ahead=1)
    writers.submit(0)
    writers.submit(1)
    with pytest.raises(RuntimeError, match="bulk refused"):
        for item in range(2, 50):  # the error surfaces at a later submit
            writers.submit(item)
            time.sleep(0.01)
    with pytest.raises(RuntimeError):
        writers.close()
    assert saved == [0]  # nothing after the failed item is saved: it will be replayed


def test_backpressure_blocks_the_reader_while_writes_wait() -> None:
    release = threading.Event()
    writers: Writers[int] = Writers(lambda _item: release.wait(5), lambda _item: None,
                                    threads=1, ahead=1)
    writers.submit(0)  # taken by the writer, which blocks
    writers.submit(1)  # fills the queue
    blocked = threading.Thread(target=writers.submit, args=(2,))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()  # the reader waits: bounded queue
    release.set()
    blocked.join(5)
    writers.close()
    assert writers.saved == 3


def test_a_submit_after_close_is_refused_and_a_second_close_is_harmless() -> None:
    """A rebalance drains (closes) the writers from Kafka's thread: an item handed to the
    closed ones would never be written, so the hand-off must fail loudly, not hang."""
    written: list[int] = []
    writers: Writers[int] = Writers(written.append, lambda item: None)
    writers.submit(1)
    writers.close()
    writers.close()
    assert written == [1]
    with pytest.raises(RuntimeError, match="after close"):
        writers.submit(2)
