"""The recall HTTP face's own cost: ``POST /v1/recall`` through the app that
``esrec recall serve`` runs (body size check, request validation, the token check, the
thread-pool hand-over, the answer's check and its JSON), on one fixed answer of ``k``
candidates, so no server and no recall work is in it. Each request is driven straight
through the ASGI interface (no socket, no HTTP client in the figure).

Reference, measured in the same run: the same answer's JSON alone
(``RecallResponse.model_dump_json``), the part any face must do. The ratio travels
between machines where the absolute figures do not (issue 27).

    python -m bench.serving [--requests 2000] [--k 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from bench.timing import percentiles_ms
from esrec.settings import Settings
from recall.api import create_app
from recall.fusion import rrf
from recall.metrics import RecallMetrics
from recall.request import RecallResponse, request_model

CHANNELS = ("knn", "i2i", "tags", "fresh", "mlt")


class FixedAnswer:
    """What ``create_app`` reads of a Recaller, answering every request with one
    answer built by the fusion from ``k`` hits per channel."""

    def __init__(self, k: int) -> None:
        self.settings = Settings()
        self.request_model = request_model(self.settings)
        self.metrics = RecallMetrics()
        ranked = {name: [(f"item-{(n * (c + 1)) % (3 * k)}", 1.0 - n / k) for n in range(k)]
                  for c, name in enumerate(CHANNELS)}
        self.answer = RecallResponse.model_construct(
            user_id="u1", request_id=uuid.uuid4().hex, model="bench@1", index="bench-1",
            canary=None, cold_start=False, cluster=None, degraded=False, reasons={},
            took_ms=1.0, stages_ms={}, candidates=rrf(ranked, dict.fromkeys(CHANNELS, 1.0),
                                                      k, 60))

    def recall(self, _request: Any) -> RecallResponse:
        return self.answer


async def _post(app: Any, body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI interface, as a server would hand it over."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/recall", "raw_path":
             b"/v1/recall", "query_string": b"", "root_path": "", "server": ("bench", 80),
             "client": ("bench", 1), "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]}
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # the client never disconnects mid-request here
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    return {**percentiles_ms(seconds), "mean": round(sum(seconds) / len(seconds) * 1000, 3)}


async def _face(app: Any, requests: int) -> tuple[list[float], list[float]]:
    body = json.dumps({"user_id": "u1"}).encode()
    walls, cpus = [], []
    for _ in range(requests):
        started, cpu = time.perf_counter(), time.process_time()
        status, answer = await _post(app, body)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        if status != 200:
            raise RuntimeError(f"the app answered {status}: {answer[:200]!r}")
    return walls, cpus


def measure(requests: int, k: int) -> dict[str, Any]:
    recaller = FixedAnswer(k)
    app = create_app(recaller)  # type: ignore[arg-type]  # only what the app reads
    asyncio.run(_face(app, requests // 10))  # warm up: imports, the thread pool
    walls, cpus = asyncio.run(_face(app, requests))
    json_s = []
    for _ in range(requests):
        started = time.process_time()
        recaller.answer.model_dump_json()
        json_s.append(time.process_time() - started)
    face = _summary_ms(cpus)
    alone = _summary_ms(json_s)
    return {"requests": requests, "candidates": k,
            "face_wall_ms": _summary_ms(walls), "face_cpu_ms": face,
            "references": {"answer_json_cpu_ms": alone},
            "ratios": {"face_cpu_over_answer_json_cpu": round(
                face["mean"] / max(alone["mean"], 1e-4), 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(measure(args.requests, args.k), indent=2))


if __name__ == "__main__":
    main()
