"""Recall quality on a real dataset, through the whole pipeline as a user runs it, one run.

    python -m bench.quality --data ../shared/datasets/ml-latest-small
        [--config bench/movielens.yaml] [--epochs 12] [--users N] [--configured]

import (the `esrec towers import` code path, into MongoDB) -> train (validation epoch
selection) -> publish -> build -> promote -> the interaction log minus each user's two
held-out interactions replayed as user events through Kafka into `esrec recall events`
(a real process: user state and measured popularity) -> user clusters -> every channel's
own list for each validation user (second-to-last interaction), and fusion weights
calibrated on them (bench.fusion) -> the validation interactions replayed -> for every
test user
(leave-last-out by time; every unseen item ranks), HR@10/50/100 of:

    most_popular   the training set's most frequent items
    itemknn        item-based CF (cosine, best neighbourhood size of a few, same run)
    towers_exact   the exported towers, brute force over the whole catalog
    es_knn         Recaller with the kNN channel only (Elasticsearch, seen items excluded)
    es_fused       Recaller with the default channels and weights, fused
    es_fused_with_calibrated_weights   the same lists fused with the validation's weights
    channel_<c>    each channel's own list (what the channel alone serves)
    fusion         per channel: fused hits it found, hits only it found, fused HR
                   without it

Targets (issue 14): es_knn HR@100 within 1% of towers_exact; es_fused >= towers_exact;
towers_exact >= 1.3 x itemknn at HR@100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.fusion import calibrate, contributions, fused_hr
from bench.indexer import stack_settings
from esrec.lifetime import die_with_parent, exit_on_sigterm
from esrec.ports import free_port
from esrec.settings import Settings, server_environment
from indexer.layout import model_of
from indexer.lifecycle import Versions
from indexer.service import Services
from recall.clusters import build
from recall.popularity import ClusterPopularity
from recall.recaller import Recaller
from recall.replay import replay
from recall.request import RecallResponse
from recall.state import UserStates
from runtime.clients import elasticsearch_client, mongo_client
from towers.artifact import use_one_torch_thread
from towers.dataset import Collections, EvalCase, Interaction, write_mongo
from towers.evaluate import (
    evaluate_itemknn,
    evaluate_popularity,
    evaluate_vectors,
    rank_metrics,
    usable_cases,
)
from towers.importer import ImportConfig, import_dataset
from towers.report import training_summary
from towers.train import TrainConfig, train

NAME, VERSION = "quality", "1"
REF = f"{NAME}@{VERSION}"
K_VALUES = (10, 50, 100)
NEIGHBOURS = (20, 50, 100, 200)
CLIENTS = 2
DEFAULT_CONFIG = Path(__file__).with_name("movielens.yaml")


def _hr(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in metrics.items()
            if key.startswith(("hr@", "ndcg@")) or key == "cases"}


def _applied(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('esrec_user_events_total{outcome="applied"}'):
                return float(line.split()[-1])
    return 0.0


def build_user_state(settings: Settings, events: Sequence[Interaction], log: Path,
                     timeout_s: float = 3600) -> dict[str, float]:
    """Replay ``events`` through Kafka into a real `esrec recall events` process and wait
    until it has applied every one; returns the replay's and the consumer's rates."""
    port = free_port()
    env = {**os.environ, **server_environment(settings)}
    started = time.perf_counter()
    sent = replay(settings, events)
    sent_s = time.perf_counter() - started
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "esrec", "recall", "events",
                                    "--metrics-port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + timeout_s
        applied = 0.0
        while applied < sent:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the events consumer stopped at {applied:.0f}/{sent}: "
                                   f"{log.read_text()[-2000:]}")
            time.sleep(1.0)
            try:
                applied = _applied(port)
            except OSError:
                continue  # not serving /metrics yet
        consumed_s = time.perf_counter() - started - sent_s
    finally:
        process.terminate()
        process.wait(60)
    return {"events": sent, "replay_events_per_s": round(sent / sent_s, 1),
            "consumer_events_per_s": round(sent / consumed_s, 1)}


def _explained(recaller: Recaller, cases: Sequence[EvalCase], k: int
               ) -> tuple[list[RecallResponse], dict[str, list[list[str]]]]:
    """Each case's fused answer (default weights) and every channel's own list."""
    def one(case: EvalCase) -> tuple[RecallResponse, dict[str, list[str]]]:
        return recaller.explain({"user_id": str(case.user["_id"]), "k": k})

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, cases))
    names = list(recaller.channels)
    return ([answer for answer, _ in results],
            {name: [lists.get(name, []) for _, lists in results] for name in names})


def _ranks(lists: Sequence[Sequence[str]], cases: Sequence[EvalCase], k: int) -> np.ndarray:
    """Each case's target rank in a served list (k when it is not there)."""
    return np.asarray([float(items.index(case.target)) if case.target in items[:k]
                       else float(k) for items, case in zip(lists, cases, strict=True)])


def _seen_served(lists: Sequence[Sequence[str]], cases: Sequence[EvalCase]) -> int:
    return sum(item in case.seen for items, case in zip(lists, cases, strict=True)
               for item in items)


def _held_out(cases: Sequence[EvalCase]) -> set[tuple[str, str, float]]:
    return {(str(case.user["_id"]), case.target, case.ts) for case in cases}


def measure(settings: Settings, data: Path, config: Path, train_config: TrainConfig,
            work: Path, users: int | None, dump: Path | None = None) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"bench.quality: {name.removesuffix('_s')} done in {timings[name]} s",
              file=sys.stderr, flush=True)

    dataset, report = import_dataset(ImportConfig.load(config), data)
    db = mongo_client(settings.mongo)[settings.mongo.database]
    es = elasticsearch_client(settings.es, request_timeout=120)
    write_mongo(dataset, db, Collections(), replace=False)
    lap("import_s")
    result = train(dataset, train_config)
    summary = training_summary(result, train_config)
    artifact = result.export(work / "model", NAME, VERSION, summary)
    lap("train_s")
    services = Services.create(settings, es, db)
    services.registry.publish(work / "model")
    versions = Versions(services)
    versions.build(REF)
    versions.promote(REF)
    lap("build_s")

    item_ids = [str(item["_id"]) for item in dataset.items]
    split = result.split
    cases = usable_cases(split.cases, set(item_ids))[:users]
    validation = usable_cases(split.validation, set(item_ids))[:users]
    test_held, validation_held = _held_out(split.cases), _held_out(split.validation)
    before_validation = [i for i in dataset.interactions
                         if (i.user_id, i.item_id, i.ts) not in test_held | validation_held]
    events = build_user_state(settings, before_validation, work / "events.log")
    states = UserStates(db, settings)
    clusters = build(services.registry, states, ClusterPopularity(db, settings), REF)
    lap("user_state_s")

    figures: dict[str, Any] = {
        "clusters": {key: value for key, value in clusters.report().items()
                     if key in ("k", "users", "inertia")},
        "most_popular": _hr(evaluate_popularity(split.item_counts, item_ids, cases,
                                                K_VALUES))}
    knn = {n: evaluate_itemknn(split.history, item_ids, cases, n, K_VALUES)
           for n in NEIGHBOURS}
    best = max(knn, key=lambda n: knn[n]["hr@100"])
    figures["itemknn"] = {**_hr(knn[best]), "neighbours": best,
                          "hr@100_by_neighbours": {n: round(m["hr@100"], 4)
                                                   for n, m in knn.items()}}
    users_at = artifact.embed_users([c.user for c in cases], at=[c.ts for c in cases])
    figures["towers_exact"] = _hr(evaluate_vectors(artifact.embed_items(dataset.items),
                                                   item_ids, users_at, cases, K_VALUES))
    lap("offline_eval_s")

    use_one_torch_thread()
    recaller = Recaller(es, db, services.registry, settings)
    k = max(K_VALUES)
    rrf_k = settings.recall.rrf_k
    defaults = {name: channel.settings.weight for name, channel in recaller.channels.items()}
    _, validation_lists = _explained(recaller, validation, k)
    validation_targets = [c.target for c in validation]
    calibrated, own = calibrate(validation_lists, validation_targets, k)
    figures["fusion_on_validation"] = {
        "cases": len(validation), "channel_hr@100": own, "calibrated_weights": calibrated,
        "default_weights": defaults,
        "default_hr@100": fused_hr(validation_lists, defaults, validation_targets, k, rrf_k),
        "calibrated_hr@100": fused_hr(validation_lists, calibrated, validation_targets, k,
                                      rrf_k)}
    lap("validation_s")
    build_user_state(settings, [i for i in dataset.interactions
                                if (i.user_id, i.item_id, i.ts) in validation_held],
                     work / "events-validation.log")
    answers, lists = _explained(recaller, cases, k)
    targets = [case.target for case in cases]
    for name, served in lists.items():
        figures["es_knn" if name == "knn" else f"channel_{name}"] = _hr(
            rank_metrics(_ranks(served, cases, k), K_VALUES))
    figures["es_fused"] = _hr(rank_metrics(_ranks(
        [[c.item_id for c in answer.candidates] for answer in answers], cases, k), K_VALUES))
    figures["es_fused_with_calibrated_weights"] = fused_hr(lists, calibrated, targets, k,
                                                           rrf_k)
    figures["fusion"] = contributions(lists, targets, answers, defaults, k, rrf_k)
    lap("served_eval_s")
    figures["seen_items_served"] = _seen_served(
        [[c.item_id for c in answer.candidates] for answer in answers] + lists["knn"],
        [*cases, *cases])
    hot = recaller.recall({"user_id": "__nobody__", "k": 20, "channels": {"hot": 1.0}})
    figures["hot_for_a_cold_user"] = len(hot.candidates)
    if dump is not None:
        dump.write_text(json.dumps({"targets": targets, "weights": defaults,
                                    "lists": lists}))

    meta = model_of(es, services.index_of(REF) or "")
    exact, served, fused = (figures[name]["hr@100"]
                            for name in ("towers_exact", "es_knn", "es_fused"))
    itemknn = figures["itemknn"]["hr@100"]
    return {
        "dataset": {"path": str(data), "items": len(dataset.items), "users": len(dataset.users),
                    "interactions": len(dataset.interactions), "test_users": len(cases),
                    "import_bad_rows": report.as_dict()["bad_total"]},
        "training": {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                     "config": summary["config"],
                     "index": {key: meta.get(key) for key in (
                         "index_options", "int8_recall", "int8_recall_k", "recall_queries")}},
        "user_state": events, "hr": figures, "timings_s": timings,
        "targets": {
            "es_knn_vs_exact_hr@100": round(served / exact, 4) if exact else None,
            "es_knn_within_1pct": bool(exact and served >= 0.99 * exact),
            "fused_vs_exact_hr@100": round(fused / exact, 4) if exact else None,
            "fused_at_least_exact": bool(fused >= exact),
            "towers_vs_itemknn_hr@100": round(exact / itemknn, 4) if itemknn else None,
            "towers_at_least_1.3x_itemknn": bool(itemknn and exact >= 1.3 * itemknn),
            "no_seen_item_served": figures["seen_items_served"] == 0}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="import mapping (default: bench/movielens.yaml)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--users", type=int, default=None, help="test users (default: all)")
    parser.add_argument("--configured", action="store_true",
                        help="use the configured servers (ESREC_*) instead of a private stack")
    parser.add_argument("--dump", type=Path,
                        help="write each test user's target and every channel's own list "
                             "(JSON) for offline fusion studies")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esrec-bench-quality-") as tmp:
        work = Path(tmp)
        settings, _, stack = stack_settings(args.configured, work / "stack")
        try:
            figures = measure(settings, args.data, args.config,
                              TrainConfig(epochs=args.epochs), work, args.users, args.dump)
        finally:
            if stack is not None:
                stack.down()
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    with exit_on_sigterm():  # its stack and child processes stop with it
        main()
