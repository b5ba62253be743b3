"""Session-scoped servers (see tests/servers.py), per-run unique names, one small model."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from pymongo import MongoClient
from pymongo.database import Database

from esrec.settings import Settings
from indexer.layout import delete_indices
from tests.servers import ServerPool
from towers.artifact import ModelArtifact
from towers.dataset import Dataset
from towers.synth import SynthConfig, generate
from towers.train import TrainConfig, TrainResult, train

RUN_ID = uuid.uuid4().hex[:8]  # every index, database and topic of this run carries it
_counter = itertools.count()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("stack"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def es_url(servers: ServerPool) -> str:
    return servers.url("elasticsearch")


@pytest.fixture(scope="session")
def mongo_url(servers: ServerPool) -> str:
    return servers.url("mongodb")


@pytest.fixture(scope="session")
def kafka_bootstrap(servers: ServerPool) -> str:
    return servers.url("kafka")


@pytest.fixture(scope="session")
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mongo_client(mongo_url: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_url, serverSelectionTimeoutMS=10_000, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("items") -> a lowercase name no other test or run uses."""
    return lambda stem: f"t{RUN_ID}-{next(_counter)}-{stem}".lower()


@pytest.fixture
def mongo_db(mongo_client: MongoClient, unique: Callable[[str], str]) -> Iterator[Database]:
    name = unique("db").replace("-", "_")
    yield mongo_client[name]
    mongo_client.drop_database(name)


@pytest.fixture
def settings(es: Elasticsearch, es_url: str, mongo_client: MongoClient, mongo_url: str,
             kafka_bootstrap: str, unique: Callable[[str], str]) -> Iterator[Settings]:
    """Settings aimed at the test servers, with this test's own database, prefix and alias;
    what the test created there is removed afterwards."""
    stem = unique("s")
    yield Settings(
        es={"hosts": [es_url]},
        mongo={"uri": mongo_url, "database": stem.replace("-", "_")},
        kafka={"bootstrap_servers": [kafka_bootstrap],
               "topics": {"user_events": f"{stem}.events", "item_changes": f"{stem}.changes",
                          "item_backfill": f"{stem}.backfill", "dead_letters": f"{stem}.dead"}},
        index={"prefix": stem, "serving_alias": f"{stem}-serving"},
        rollout={"watch_s": 0},  # a roll watches only in the tests about the watch
    )
    delete_indices(es, f"{stem}-*")
    mongo_client.drop_database(stem.replace("-", "_"))


# -- one small trained model per session: training is the slow part --------------------

SMALL = SynthConfig(items=600, users=400, topics=10, mean_interactions=15, seed=3)
QUICK = TrainConfig(epochs=4, batch_size=256, dims=32, seed=1)


@pytest.fixture(scope="session")
def small_dataset() -> Dataset:
    return generate(SMALL)


@pytest.fixture(scope="session")
def trained(small_dataset: Dataset) -> TrainResult:
    return train(small_dataset, QUICK)


@pytest.fixture(scope="session")
def artifact_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("artifact") / "model"
    trained.export(directory, "test-model", "1",
                   {"config": {"history_len": QUICK.history_len}})
    return directory


@pytest.fixture
def artifact(artifact_dir: Path) -> ModelArtifact:
    return ModelArtifact.load(artifact_dir)


@pytest.fixture(scope="session")
def v2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-model@2: another training with other dims (16 vs 32), so a query that mixed
    the two versions' vectors would fail outright, not just rank badly."""
    result = train(generate(SMALL), replace(QUICK, dims=16, epochs=2))
    directory = tmp_path_factory.mktemp("v2") / "model"
    result.export(directory, "test-model", "2")
    return directory
