"""`esrec recall serve`: the HTTP face of the Recaller (FastAPI).

    POST /v1/recall   RecallRequest -> RecallResponse; 422 names the bad field
    GET  /healthz     serving index and model, or 503 with the reason
    GET  /metrics     Prometheus: latency by outcome, per-channel took, degraded count
    GET  /docs        OpenAPI UI (the schema lists the allowed channels and filters), its
                      assets served from the swagger-ui-bundle package: works offline

Bad input never reaches a 500: a body over MAX_BODY_BYTES is a 413, a body that is not
JSON or does not validate is a 422 listing each field's location with at most a short
excerpt of what was sent (NaN, 1e400 or a lone surrogate included); esrec's own errors
and server errors get the HTTP status of their kind (runtime.errors).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at
# runtime, and the request model is built from the settings inside create_app
import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from recall.recaller import Recaller
from recall.request import RecallResponse
from runtime.clients import SERVER_ERRORS, server_error
from runtime.errors import HTTP_STATUSES, EsrecError, Kind

log = logging.getLogger("esrec.recall.api")
MAX_BODY_BYTES = 64 * 1024  # a recall request is a few hundred bytes; 100 session ids ~4 KB
EXCERPT_CHARS = 40
DOCS_ASSETS = "/docs-assets"


def _excerpt(value: Any) -> str:
    """What was sent, as a short ASCII-safe excerpt (never the whole input)."""
    text = ascii(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def validation_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's errors without the parts that can be huge or unserialisable (input, ctx)."""
    return [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
             "type": str(error.get("type", "")),
             **({"input": _excerpt(error["input"])} if "input" in error else {})}
            for error in errors]


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before anything parses
    it. The body (at most ``limit`` bytes) is read here and handed on whole, so a streamed
    body without Content-Length is held to the same limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(send)
                return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # a disconnect, while the app waits for one
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's script and style from a local package, not a CDN: the
    service runs where nothing outside the cluster can be reached."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


def create_app(recaller: Recaller) -> FastAPI:
    app = FastAPI(title="esrec recall", version="1", docs_url=None, redoc_url=None,
                  description="Candidates for a feed: kNN on the user's real-time vector "
                              "next to other Elasticsearch channels, fused, with provenance.")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    _offline_docs(app)
    token = recaller.settings.recall.api_token
    bearer = HTTPBearer(auto_error=False)
    request_model = recaller.request_model

    # async: a plain function would run on the thread pool, one more thread hand-over
    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Depends(bearer)]) -> None:
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(
                credentials.credentials.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(list(error.errors()))},
                            status_code=422)

    async def failed(_request: Request, error: Exception) -> JSONResponse:
        known = error if isinstance(error, EsrecError) else server_error(error)
        assert known is not None  # registered only for the classes server_error knows
        if known.kind is not Kind.REFUSED:
            log.warning("recall unavailable", extra={"error": str(known)})
        return JSONResponse({"detail": str(known), "kind": known.kind.value},
                            status_code=HTTP_STATUSES[known.kind])

    handled: list[type[Exception]] = [EsrecError, *SERVER_ERRORS]
    for kind in handled:
        app.add_exception_handler(kind, failed)

    @app.post("/v1/recall", response_model=RecallResponse,
              dependencies=[Depends(authorized)],
              responses={401: {"description": "bearer token required"},
                         413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
                         503: {"description": "no serving version, or a server is down"}})
    async def recall(body: Annotated[request_model, Body()]) -> RecallResponse:  # type: ignore[valid-type]
        # the blocking recall on the thread pool; the answer is then checked and written
        # on the event loop (a plain function's answer goes back to the pool for that: a
        # second thread hand-over, ~0.3 ms of CPU a request on a 2-core VM)
        return await run_in_threadpool(recaller.recall, body)

    @app.get("/healthz", responses={503: {"description": "not ready"}})
    def healthz() -> Any:
        try:
            serving = recaller.resolver.current()
        except Exception as error:
            known = error if isinstance(error, EsrecError) else server_error(error)
            if known is None:
                raise
            return JSONResponse({"status": "unavailable", "reason": str(known)}, 503)
        return {"status": "ok", "index": serving.index, "model": serving.model}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(recaller.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
