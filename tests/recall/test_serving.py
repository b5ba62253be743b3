"""Serving-version resolution: a cached alias that no request waits for after the first."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.layout import resolve_alias
from indexer.lifecycle import Versions
from recall import serving
from recall.serving import NoServingVersion, ServingResolver
from runtime.clients import elasticsearch_client
from tests.indexer.helpers import services
from tests.proxy import TcpProxy

pytestmark = pytest.mark.slow
V1 = "test-model@1"


def test_an_unreachable_cluster_keeps_the_last_version_serving(
        settings: Settings, es: Elasticsearch, es_url: str, artifact_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    svc = services(settings, es, artifact_dir)
    versions = Versions(svc)
    assert versions.build(V1).done  # an empty catalog: nothing to scan
    versions.promote(V1)
    target = urlparse(es_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    through_proxy = elasticsearch_client(settings.es.model_copy(
        update={"hosts": [proxy.url], "request_timeout_s": 2.0}), max_retries=0)
    resolver = ServingResolver(through_proxy, svc.registry, settings.index.serving_alias,
                               ttl_s=0.05)
    try:
        first = resolver.current()
        assert first.model == V1 and first.index == svc.index_of(V1)
        proxy.cut()
        time.sleep(0.1)  # expired: the next call refreshes in the background
        with caplog.at_level(logging.WARNING, logger="esrec.recall"):
            assert resolver.current() is first  # answered from the cache, no error
            deadline = time.monotonic() + 10
            while "cannot refresh the serving alias" not in caplog.text:
                assert time.monotonic() < deadline, "the failed refresh was not logged"
                time.sleep(0.05)
            assert resolver.current() is first
    finally:
        proxy.cut()


def test_requests_never_wait_for_the_alias_lookup(
        settings: Settings, es: Elasticsearch, artifact_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services(settings, es, artifact_dir)
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
    resolver = ServingResolver(es, svc.registry, settings.index.serving_alias, ttl_s=0.05)
    first = resolver.current()
    entered, release = threading.Event(), threading.Event()

    def held_lookup(client: Elasticsearch, alias: str) -> str | None:
        """The real lookup, held until the test lets it go: a slow cluster."""
        entered.set()
        release.wait(30)
        return resolve_alias(client, alias)

    monkeypatch.setattr(serving, "resolve_alias", held_lookup)
    time.sleep(0.1)
    try:
        assert resolver.current() is first  # starts the refresh, does not wait for it
        assert entered.wait(10)
        answered: list[object] = []
        others = [threading.Thread(target=lambda: answered.append(resolver.current()))
                  for _ in range(4)]
        for thread in others:
            thread.start()
        for thread in others:
            thread.join(5)
        assert answered == [first] * 4  # all answered while the lookup is still held
    finally:
        release.set()


def test_no_serving_alias_is_a_clear_error(settings: Settings, es: Elasticsearch,
                                           artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    resolver = ServingResolver(es, svc.registry, settings.index.serving_alias)
    with pytest.raises(NoServingVersion, match="esrec models roll"):
        resolver.current()
