"""`esrec recall events|serve|query|clusters`: user state from Kafka, the HTTP service, a
lookup, the user clusters of a model version."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from esrec.cli.context import embedding_process, mongo_database, settings_from
from recall.state import UserStates, problems
from runtime.clients import elasticsearch_client, mongo_client
from runtime.errors import Refused
from runtime.logs import configure
from runtime.service import collect_cycles_rarely, install_signal_handlers, serve_http

if TYPE_CHECKING:  # the recall modules (and torch) load in the commands, not for --help
    from recall.recaller import Recaller
    from recall.request import RecallResponse
    from towers.registry import ModelRegistry

# the recall path answers in milliseconds; a stuck Elasticsearch must not hold a request
RECALL_REQUEST_TIMEOUT_S = 2.0


@click.group()
def recall() -> None:
    """Recall for the feed service: user events, the HTTP API, one-off queries."""


def recaller_from(ctx: click.Context) -> Recaller:
    """A Recaller whose servers answer within RECALL_REQUEST_TIMEOUT_S or count as down
    (a request then gets 503 at once instead of waiting out the default 10-30 s)."""
    from recall.recaller import Recaller
    from towers.registry import ModelRegistry

    settings = settings_from(ctx)
    timeout_ms = int(RECALL_REQUEST_TIMEOUT_S * 1000)
    db = mongo_client(settings.mongo, serverSelectionTimeoutMS=timeout_ms,
                      socketTimeoutMS=timeout_ms)[settings.mongo.database]
    es = elasticsearch_client(settings.es, request_timeout=RECALL_REQUEST_TIMEOUT_S)
    return Recaller(es, db, ModelRegistry(db, settings.mongo.collections.models), settings)


@recall.command("events")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Port for /healthz, /livez and /metrics (default: "
                   "recall.events_metrics_port; 0: none).")
@click.pass_context
def events(ctx: click.Context, metrics_port: int | None) -> None:
    """Consume the user-events topic into MongoDB user state until SIGTERM/SIGINT."""
    from recall.events import EventConsumer

    configure()
    collect_cycles_rarely()
    settings = settings_from(ctx)
    stop = threading.Event()
    install_signal_handlers(stop, settings.recall.shutdown_timeout_s)
    consumer = EventConsumer(settings, mongo_database(ctx), stop)
    port = settings.recall.events_metrics_port if metrics_port is None else metrics_port
    if port:
        serve_http(settings.http.host, port, consumer.metrics.registry, consumer.health)
    consumer.run()
    click.echo(json.dumps(asdict(consumer.counts)))


@recall.command("serve")
@click.option("--host", help="Interface to listen on (default: http.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Default: recall.port (8080).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve POST /v1/recall, /healthz, /metrics and /docs."""
    import uvicorn

    from recall.api import create_app

    configure()
    embedding_process()
    recaller = recaller_from(ctx)
    # uvicorn drains on SIGTERM, then re-raises the signal into the handler it found: ours
    # (a stop flag with a watchdog), so a drained service exits 0 like the other daemons
    install_signal_handlers(threading.Event(), recaller.settings.recall.shutdown_timeout_s)
    uvicorn.run(create_app(recaller), host=host or settings_from(ctx).http.host,
                port=recaller.settings.recall.port if port is None else port,
                log_config=None, access_log=False)


def print_table(response: RecallResponse, limit: int | None = None) -> None:
    """Candidates (the first ``limit``, default all) with provenance, for a terminal."""
    click.echo(f"user {response.user_id}  model {response.model}  index {response.index}  "
               f"{response.took_ms:.1f} ms" + ("  cold start" if response.cold_start else "")
               + (f"  DEGRADED {response.reasons}" if response.degraded else ""))
    click.echo(f"{'#':>3} {'ITEM':<10} {'SCORE':>8}  SOURCES (channel rank)")
    for position, candidate in enumerate(response.candidates[:limit], 1):
        sources = ", ".join(f"{s.channel} {s.rank}" for s in candidate.sources)
        click.echo(f"{position:>3} {candidate.item_id:<10} {candidate.score:>8.4f}  {sources}")


@recall.command("query")
@click.argument("user_id")
@click.option("--k", type=click.IntRange(min=1),
              help="Candidates to return (default: recall.default_k, ESREC_RECALL__DEFAULT_K).")
@click.option("--recent", multiple=True, help="A session item id, newest first (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="The full response as JSON.")
@click.pass_context
def query(ctx: click.Context, user_id: str, k: int | None, recent: tuple[str, ...],
          as_json: bool) -> None:
    """Recall for USER_ID once, printed as a table with provenance."""
    recaller = recaller_from(ctx)
    request = {"user_id": user_id, "recent_items": list(recent)} | ({"k": k} if k else {})
    try:
        response = recaller.recall(request)
    except ValidationError as error:
        raise Refused(problems(error)) from None
    if as_json:
        click.echo(response.model_dump_json(indent=2))
    else:
        print_table(response)


@recall.group("clusters")
def clusters() -> None:
    """User clusters of a model version: the `cluster` channel's groups."""


def _states_and_registry(ctx: click.Context) -> tuple[UserStates, ModelRegistry]:
    from towers.registry import ModelRegistry

    settings = settings_from(ctx)
    db = mongo_database(ctx)
    return UserStates(db, settings), ModelRegistry(db, settings.mongo.collections.models)


def _users_read(done: int) -> None:
    click.echo(f"clusters: {done} users read", err=True)


@clusters.command("build")
@click.argument("ref")
@click.option("--k", type=click.IntRange(min=1),
              help="Clusters (default: sqrt(users / 2), at least 50 users each, <= 256).")
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def clusters_build(ctx: click.Context, ref: str, k: int | None, seed: int) -> None:
    """k-means over every user's vector of REF (NAME@VERSION): a new generation."""
    from recall.clusters import build
    from recall.popularity import ClusterPopularity

    states, registry = _states_and_registry(ctx)
    built = build(registry, states, ClusterPopularity(mongo_database(ctx), settings_from(ctx)),
                  ref, k, seed, _users_read)
    click.echo(json.dumps(built.report(), indent=2))


@clusters.command("refresh")
@click.argument("ref")
@click.pass_context
def clusters_refresh(ctx: click.Context, ref: str) -> None:
    """Move REF's centroids toward the users active since the newest generation (no
    retrain); prints how far they moved."""
    from recall.clusters import refresh_clusters

    states, registry = _states_and_registry(ctx)
    click.echo(json.dumps(refresh_clusters(registry, states, ref, _users_read).report(),
                          indent=2))
