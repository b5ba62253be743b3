"""Session-scoped servers (see tests/servers.py) and per-run unique names."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator

import pytest
from elasticsearch import Elasticsearch
from pymongo import MongoClient
from pymongo.database import Database

from esrec.settings import Settings
from tests.servers import ServerPool

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
def settings(es_url: str, mongo_url: str, kafka_bootstrap: str,
             unique: Callable[[str], str]) -> Settings:
    """Settings aimed at the test servers, with this test's own database, prefix and alias."""
    stem = unique("s")
    return Settings(
        es={"hosts": [es_url]},
        mongo={"uri": mongo_url, "database": stem.replace("-", "_")},
        kafka={"bootstrap_servers": [kafka_bootstrap],
               "topics": {"user_events": f"{stem}.events", "item_changes": f"{stem}.changes",
                          "dead_letters": f"{stem}.dead"}},
        index={"prefix": stem, "serving_alias": f"{stem}-serving"},
    )
