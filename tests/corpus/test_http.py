"""Bad requests against the real `esrec recall serve` (with a bearer token): each gets a
4xx naming the field, never a 500, never more than a short excerpt of what was sent; a
valid request right after still answers; schemathesis sends >= 1000 generated requests,
valid and schema-breaking, and finds no 5xx."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from elasticsearch import Elasticsearch
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from esrec.ports import free_port
from esrec.settings import Settings
from indexer.lifecycle import Versions
from tests.indexer.helpers import cli_env, services
from tests.processes import EsrecProcess, get_json
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate

pytestmark = pytest.mark.slow
TOKEN = "corpus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
CATALOG = SynthConfig(items=300, users=20, topics=5, mean_interactions=3, seed=4)

# (raw body, expected status, a location the 422 must name)
BAD: list[tuple[bytes, int, list[Any] | None]] = [
    (b'{"user_id": "u1", "k": NaN}', 422, ["body", "k"]),
    (b'{"user_id": "u1", "k": 1e400}', 422, ["body", "k"]),
    (b'{"user_id": "u1", "k": 0}', 422, ["body", "k"]),
    (b'{"user_id": "u1", "k": 100000}', 422, ["body", "k"]),
    (b'{"user_id": "\\ud800"}', 422, ["body", "user_id"]),
    (b'{"user_id": "u\\u00001"}', 422, ["body", "user_id"]),  # a NUL: outside the id rule
    (b'{"user_id": "' + b"u" * 513 + b'"}', 422, ["body", "user_id"]),
    (b'{"k": 10}', 422, ["body", "user_id"]),
    (b'{"user_id": "u1", "channels": {"knn": -1}}', 422, ["body", "channels", "knn"]),
    (b'{"user_id": "u1", "channels": {"knn": NaN}}', 422, ["body", "channels", "knn"]),
    (b'{"user_id": "u1", "channels": {"knn": Infinity}}', 422, ["body", "channels", "knn"]),
    (b'{"user_id": "u1", "channels": {"knn": 1000}}', 422, ["body", "channels", "knn"]),
    (b'{"user_id": "u1", "channels": {"nope": 1}}', 422,
     ["body", "channels", "nope", "[key]"]),
    (b'{"user_id": "u1", "filters": {"created_at": {"gte": 5}}}', 422,
     ["body", "filters", "created_at", "gte"]),
    (b'{"user_id": "u1", "filters": {"created_at": {"gte": "2026-01-01T10:00:00"}}}', 422,
     ["body", "filters", "created_at", "gte"]),
    (b'{"user_id": "u1", "filters": {"price": {"gte": NaN}}}', 422,
     ["body", "filters", "price", "gte"]),
    (b'{"user_id": "u1", "filters": {"price": {"gte": "cheap"}}}', 422,
     ["body", "filters", "price", "gte"]),
    (b'{"user_id": "u1", "filters": {"title": "x"}}', 422, ["body", "filters", "title"]),
    (b'{"user_id": "u1", "filters": {"category": []}}', 422, None),
    (b'{"user_id": "u1", "recent_items": ["ok", "tab\\there"]}', 422,
     ["body", "recent_items", 1]),
    (json.dumps({"user_id": "u1", "recent_items": ["a"] * 101}).encode(), 422,
     ["body", "recent_items"]),
    (b'{"user_id": "u1", "extra": 1}', 422, ["body", "extra"]),
    (b"not json", 422, None),
    (b"", 422, None),
    (b"[]", 422, None),
    (b"[" * 10_000 + b"]" * 10_000, 400, None),
    (json.dumps({"user_id": "u1", "recent_items": ["x" * 60] * 2000}).encode(), 413, None),
]


@pytest.fixture
def served(settings: Settings, es: Elasticsearch, artifact_dir: Path,
           tmp_path: Path) -> Iterator[str]:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build("test-model@1").done
    versions.promote("test-model@1")
    port = free_port()
    env = cli_env(settings, ESREC_RECALL__API_TOKEN=TOKEN)
    server = EsrecProcess(env, tmp_path / "serve.log", "recall", "serve", "--port",
                          str(port)).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if get_json(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert server.alive() and time.monotonic() < deadline, server.text()[-3000:]
        time.sleep(0.2)
    yield base
    server.stop()
    assert "Traceback" not in server.text(), server.text()[-3000:]


def _post(base: str, body: bytes, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v1/recall", body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def test_bad_requests_get_4xx_naming_the_field(served: str) -> None:
    for body, status, location in BAD:
        got, answer = _post(served, body)
        assert got == status, (body[:80], got, answer)
        if location is not None:
            assert location in [error["loc"] for error in answer["detail"]], (body[:80], answer)
        assert len(json.dumps(answer)) < 4096, (body[:80], answer)  # never echoes it all
    assert _post(served, b'{"user_id": "u1"}', {"Content-Type": "application/json"})[0] == 401
    wrong = {**AUTH, "Authorization": "Bearer nope"}
    assert _post(served, b'{"user_id": "u1"}', wrong)[0] == 401
    status, answer = _post(served, b'{"user_id": "u1", "k": 5}')  # still serving
    assert status == 200 and len(answer["candidates"]) == 5


def test_a_streamed_body_over_the_limit_gets_413(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 8192 for _ in range(20))  # 160 KB, no Content-Length
    connection.request("POST", "/v1/recall", body=chunks, headers=AUTH,
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413, response.read()
    connection.close()


def test_schemathesis_finds_no_5xx_on_the_live_service(served: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operation = schema["/v1/recall"]["POST"]
    strategy = operation.as_strategy() | operation.as_strategy(
        schemathesis.GenerationMode.NEGATIVE)  # valid requests and schema-breaking ones
    statuses: dict[int, int] = {}

    @given(case=strategy)
    @hypothesis_settings(max_examples=1000, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))
    def never_5xx(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.body, response.text[:500])

    never_5xx()
    assert sum(statuses.values()) >= 1000, statuses
    assert statuses.get(200, 0) > 50 and statuses.get(422, 0) > 50, statuses
