"""The HTTP API over a real Recaller and real servers: a recall, health, metrics, auth.
Bad requests and the schemathesis run are in tests/corpus/test_http.py, on the live
`esrec recall serve`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
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


def test_recall_health_and_metrics(client: TestClient, recaller: Recaller  # noqa: F811
                                   ) -> None:
    response = client.post("/v1/recall", json={
        "user_id": "u1", "k": 15, "channels": {"knn": 1.0, "fresh": 0.5},
        "filters": {"category": ["cat1", "cat2"], "price": {"gte": 1}},
        "recent_items": ["i1"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < len(body["candidates"]) <= 15 and body["model"] == "test-model@1"
    served = {c["item_id"] for c in body["candidates"]}
    catalog = {str(d["_id"]): d for d in recaller.states.items.find({"_id": {"$in": list(
        served)}})}
    assert set(catalog) == served  # every candidate, and each matches both filters
    assert all(d["category"] in ("cat1", "cat2") and d["price"] >= 1 for d in catalog.values())
    assert {s["channel"] for c in body["candidates"] for s in c["sources"]} <= {"knn", "fresh"}
    assert all(c["item_id"] != "i1" for c in body["candidates"])
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["index"] == body["index"]
    metrics = client.get("/metrics").text
    assert 'esrec_recall_seconds_count{model="test-model@1",outcome="ok"} 1.0' in metrics
    assert 'esrec_recall_channel_seconds_count{channel="knn"} 1.0' in metrics
    assert 'esrec_recall_stage_seconds_count{stage="user_tower"} 1.0' in metrics
    unfiltered = client.post("/v1/recall", json={"user_id": "u1", "k": 15}).json()
    others = recaller.states.items.count_documents({"_id": {"$in": [
        c["item_id"] for c in unfiltered["candidates"]]}, "category": {"$nin": ["cat1", "cat2"]}})
    assert others > 0  # the filters changed the answer: they were applied, not ignored


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


def test_docs_work_offline(client: TestClient) -> None:
    """/docs loads Swagger UI from the service itself: no CDN address in the page, and
    every asset it names answers."""
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "https://" not in page.text and "http://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f"/docs-assets/{asset}" in page.text
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 500, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "esrec recall"
