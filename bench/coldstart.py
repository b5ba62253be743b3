"""Cold start on held-out new items and users (towers.holdout), synthetic and real data.

    python -m bench.coldstart [--data ../shared/datasets/ml-latest-small]
        [--config bench/movielens.yaml] [--share 0.1] [--seed 0]

items: HR@10/100 of held-out new items with their content-only vectors and with the mean
of their 5/10/20 nearest known items; users: HR@10/100 of held-out new users (profile,
no history) with the user tower, their profile group's mean vector and the centroid of
the group's cluster. Needs no server: each run trains on what is left.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from towers.dataset import Dataset
from towers.holdout import measure_items, measure_users
from towers.importer import ImportConfig, import_dataset
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig

DEFAULT_CONFIG = Path(__file__).with_name("movielens.yaml")


def _measure(name: str, dataset: Dataset, config: TrainConfig, share: float,
             seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"bench.coldstart: {name}: new items", file=sys.stderr, flush=True)
    figures: dict[str, Any] = {"items": measure_items(dataset, config, share, seed)}
    if any(len(user) > 1 for user in dataset.users):  # a profile beyond the id
        print(f"bench.coldstart: {name}: new users", file=sys.stderr, flush=True)
        figures["users"] = measure_users(dataset, config, share, seed)
    else:
        figures["users"] = "no user profiles in this data"
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an imported data set (default: none)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--share", type=float, default=0.1, help="items / users held out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {"synthetic": _measure("synthetic", generate(SynthConfig()),
                                     TrainConfig(epochs=8), args.share, args.seed)}
    if args.data is not None:
        dataset, _ = import_dataset(ImportConfig.load(args.config), args.data)
        results[str(args.data)] = _measure(str(args.data), dataset, TrainConfig(epochs=12),
                                           args.share, args.seed)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
