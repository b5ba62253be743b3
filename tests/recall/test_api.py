"""The HTTP API over a real Recaller and real servers: 422s that name the field, auth,
health, metrics, and a schemathesis run over the OpenAPI schema that finds no 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from esrec.settings import Settings
from recall.api import create_app
from recall.recaller import Recaller
from tests.recall.test_recaller import recall_settings, recaller  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token"


@pytest.fixture
def client(recaller: Recaller) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(recaller)) as test_client:
        yield test_client


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": "u1", "k": 0}, ["body", "k"]),
    ({"user_id": "u1", "k": 100_000}, ["body", "k"]),
    ({"user_id": "u1", "channels": {"nope": 1.0}}, ["body", "channels", "nope", "[key]"]),
    ({"user_id": "u1", "filters": {"title": "x"}}, ["body", "filters", "title"]),
    ({"user_id": "u1", "filters": {"price": {"gte": "cheap"}}},
     ["body", "filters", "price", "gte"]),
    ({"user_id": "u 1"}, ["body", "user_id"]),
    ({"user_id": "u1", "recent_items": ["ok", "no/slash"]}, ["body", "recent_items", 1]),
    ({"k": 10}, ["body", "user_id"]),
])
def test_bad_requests_get_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                               field: list[Any]) -> None:
    response = client.post("/v1/recall", json=body)
    assert response.status_code == 422, response.text
    assert field in [error["loc"] for error in response.json()["detail"]]


def test_recall_health_and_metrics(client: TestClient) -> None:
    response = client.post("/v1/recall", json={
        "user_id": "u1", "k": 15, "channels": {"knn": 1.0, "fresh": 0.5},
        "filters": {"category": ["cat1", "cat2"], "price": {"gte": 1}},
        "recent_items": ["i1"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < len(body["candidates"]) <= 15 and body["model"] == "test-model@1"
    assert {s["channel"] for c in body["candidates"] for s in c["sources"]} <= {"knn", "fresh"}
    assert all(c["item_id"] != "i1" for c in body["candidates"])
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["index"] == body["index"]
    metrics = client.get("/metrics").text
    assert 'esrec_recall_seconds_count{outcome="ok"} 1.0' in metrics
    assert 'esrec_recall_channel_seconds_count{channel="knn"} 1.0' in metrics
    assert 'esrec_recall_stage_seconds_count{stage="user_tower"} 1.0' in metrics


def test_bearer_token_when_configured(recall_settings: Settings, recaller: Recaller  # noqa: F811
                                      ) -> None:
    secured = recall_settings.recall.model_copy(update={"api_token": SecretStr(TOKEN)})
    recaller.settings = recall_settings.model_copy(update={"recall": secured})
    with TestClient(create_app(recaller)) as client:
        assert client.post("/v1/recall", json={"user_id": "u1"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/recall", json={"user_id": "u1"}, headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/recall", json={"user_id": "u1"}, headers=right).status_code == 200


def test_property_based_requests_never_get_a_5xx(recaller: Recaller) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(recaller))
    operation = schema["/v1/recall"]["POST"]
    strategy = operation.as_strategy() | operation.as_strategy(
        schemathesis.GenerationMode.NEGATIVE)  # valid requests and schema-breaking ones
    statuses: set[int] = set()

    @given(case=strategy)
    @hypothesis_settings(max_examples=200, deadline=None,
                         suppress_health_check=list(HealthCheck))
    def never_5xx(case: schemathesis.Case) -> None:
        response = case.call()
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    never_5xx()
    assert 200 in statuses and 422 in statuses
