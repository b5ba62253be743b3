"""Item-tower throughput by batch size, and training throughput, as JSON.

    python -m bench.towers [--items 3000] [--seconds 1.0]

Each figure is measured in this run, side by side: the exported item tower alone on
pre-featurized inputs, and featurization + tower (what the indexer pays per document).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, train

BATCHES = (1, 32, 256, 1024)


def rate(work: Callable[[], object], per_call: int, seconds: float) -> float:
    """Calls per second x items per call, over at least ``seconds`` after one warm-up."""
    work()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        calls += 1
    return calls * per_call / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    dataset = generate(SynthConfig(items=args.items, users=args.users))
    result = train(dataset, TrainConfig(epochs=2))
    with tempfile.TemporaryDirectory() as tmp:
        artifact = result.export(Path(tmp) / "m", "bench", "1")
        documents = (dataset.items * (1 + 1024 // len(dataset.items)))[:1024]
        by_batch = {}
        for batch in BATCHES:
            docs = documents[:batch]
            inputs = artifact.featurizer.items(docs)
            with torch.inference_mode():
                tower = rate(functools.partial(artifact.item_tower, inputs), batch,
                             args.seconds)
            full = rate(functools.partial(artifact.embed_items, docs), batch, args.seconds)
            by_batch[str(batch)] = {"tower_items_per_s": round(tower),
                                    "featurize_and_tower_items_per_s": round(full)}
    print(json.dumps({
        "benchmark": "towers",
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "dims": result.model.out_dim,
        "item_tower": by_batch,
        "batch_1024_vs_batch_1": round(by_batch["1024"]["tower_items_per_s"]
                                       / by_batch["1"]["tower_items_per_s"], 1),
        "featurize_share_at_1024": round(
            1 - by_batch["1024"]["featurize_and_tower_items_per_s"]
            / by_batch["1024"]["tower_items_per_s"], 3),
        "training_examples_per_s": round(result.examples_per_second),
        "training_examples": len(result.split.train),
    }, indent=2))


if __name__ == "__main__":
    main()
