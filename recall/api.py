"""`esrec recall serve`: the HTTP face of the Recaller (FastAPI).

    POST /v1/recall   RecallRequest -> RecallResponse; 422 names the bad field
    GET  /healthz     serving index and model, or 503 with the reason
    GET  /metrics     Prometheus: latency by outcome, per-channel took, degraded count
    GET  /docs        OpenAPI UI (the schema lists the allowed channels and filters)
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at
# runtime, and the request model is built from the settings inside create_app
import hmac
import logging
from typing import Annotated, Any

from elastic_transport import TransportError
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError

from recall.recaller import Recaller
from recall.request import RecallResponse
from recall.serving import NoServingVersion

log = logging.getLogger("esrec.recall.api")
UNAVAILABLE = (NoServingVersion, TransportError, PyMongoError)


def create_app(recaller: Recaller) -> FastAPI:
    app = FastAPI(title="esrec recall", version="1",
                  description="Candidates for a feed: kNN on the user's real-time vector "
                              "next to other Elasticsearch channels, fused, with provenance.")
    token = recaller.settings.recall.api_token
    bearer = HTTPBearer(auto_error=False)
    request_model = recaller.request_model

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                          Depends(bearer)]) -> None:
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(
                credentials.credentials.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(NoServingVersion)
    @app.exception_handler(TransportError)
    @app.exception_handler(PyMongoError)
    async def unavailable(_request: Request, error: Exception) -> JSONResponse:
        log.warning("recall unavailable", extra={"error": f"{type(error).__name__}: {error}"})
        return JSONResponse({"detail": f"recall unavailable: {type(error).__name__}: {error}"},
                            status_code=503)

    @app.post("/v1/recall", response_model=RecallResponse,
              dependencies=[Depends(authorized)],
              responses={401: {"description": "bearer token required"},
                         503: {"description": "no serving version, or a server is down"}})
    def recall(body: Annotated[request_model, Body()]) -> RecallResponse:  # type: ignore[valid-type]
        return recaller.recall(body)

    @app.get("/healthz", responses={503: {"description": "not ready"}})
    def healthz() -> Any:
        try:
            serving = recaller.resolver.current()
        except UNAVAILABLE as error:
            return JSONResponse({"status": "unavailable", "reason": str(error)}, 503)
        return {"status": "ok", "index": serving.index, "model": serving.model}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(recaller.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
