"""`esrec indexer`: backfill a version's index, run the daemon, show its status."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Never

import click
from elastic_transport import TransportError
from prometheus_client import CollectorRegistry
from pymongo.errors import ConnectionFailure, PyMongoError
from tqdm import tqdm

from esrec.cli.context import embedding_process, services_from, settings_from
from indexer.sink import TransientBulkError
from runtime.errors import Refused
from runtime.logs import configure
from runtime.retry import Backoff, retry
from runtime.service import collect_cycles_rarely, install_signal_handlers, serve_http

if TYPE_CHECKING:  # the towers (torch) load in the commands that need them, not for --help
    from indexer.backfill import OnProgress
    from indexer.daemon import Resync
    from indexer.pipeline import Target
    from indexer.service import Services

log = logging.getLogger("esrec.indexer")


@contextmanager
def progress_bar(what: str) -> Iterator[OnProgress]:
    """A progress callback drawing a bar on stderr once there is progress to show (none
    when stderr is not a terminal)."""
    bars: list[tqdm[Never]] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=what, unit="doc", disable=None))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


@click.group()
def indexer() -> None:
    """The change-stream indexer: MongoDB items -> item tower -> Elasticsearch."""


@indexer.command("backfill")
@click.argument("ref")
@click.pass_context
def backfill_command(ctx: click.Context, ref: str) -> None:
    """Fill REF's index (NAME@VERSION) from a scan of the items; resumable after a crash."""
    configure()
    embedding_process()
    services = services_from(ctx)
    install_signal_handlers(services.stop, services.settings.indexer.shutdown_timeout_s)
    target = services.target_or_new(ref)
    with progress_bar(f"backfill {target.index}") as on_progress:
        report = services.backfill(target, on_progress)
    click.echo(json.dumps({"model": ref, "index": report.index, "documents": report.documents,
                           "operation_time": report.operation_time.time,
                           "resumed": report.resumed_from is not None, "done": report.done}))
    if not report.done:
        sys.exit(1)


def _targets(services: Services, refs: tuple[str, ...]) -> Callable[[], list[Target]]:
    return lambda: [services.target(ref) for ref in refs] or services.active_targets()


@indexer.command("run")
@click.option("--model", "refs", multiple=True,
              help="NAME@VERSION to index (repeatable); default: every active version, "
              "following the registry live as versions are built and retired.")
@click.option("--on-history-lost", type=click.Choice(["fail", "resync"]),
              help="If the resume point fell off the oplog: stop (default) or rebuild.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Port for /healthz, /livez and /metrics (0: none).")
@click.pass_context
def run_command(ctx: click.Context, refs: tuple[str, ...], on_history_lost: str | None,
                metrics_port: int | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (drains, then saves a final checkpoint)."""
    configure()
    embedding_process()
    services = services_from(ctx)
    settings = services.settings.indexer
    install_signal_handlers(services.stop, settings.shutdown_timeout_s)
    _serve_health(ctx, services, metrics_port, services.metrics.registry)
    try:  # a server that is not up yet is waited for, like one that goes away later
        targets = retry(_targets(services, refs), what="servers",
                        backoff=Backoff(max_s=settings.retry_max_delay_s), stop=services.stop,
                        retry_on=(TransportError, ConnectionFailure), health=services.health)
    except (TransportError, ConnectionFailure):
        return  # stopped while waiting
    if not targets:
        raise Refused("no model version has an index yet",
                      "run `esrec indexer backfill NAME@VERSION` first")
    daemon = services.indexer(targets, follow=not refs,
                              resync=_history_policy(services, on_history_lost))
    services.health.detail = daemon.detail
    try:
        daemon.run()
    except (TransportError, PyMongoError, TransientBulkError):
        if services.stop.is_set():  # stopped mid-retry: the batch will be replayed
            log.info("stopped before the last batch was acknowledged; it will be replayed")
            return
        raise


def _history_policy(services: Services, choice: str | None) -> Resync | None:
    from indexer.lifecycle import Versions

    policy = choice or services.settings.indexer.on_history_lost
    return Versions(services).resync if policy == "resync" else None


def _serve_health(ctx: click.Context, services: Services, port: int | None,
                  registry: CollectorRegistry) -> None:
    """/healthz, /livez and /metrics, up before the servers are (they say what is awaited)."""
    chosen = services.settings.indexer.metrics_port if port is None else port
    if chosen:
        serve_http(settings_from(ctx).http.host, chosen, registry, services.health)


@indexer.command("relay")
@click.option("--name", help="This relay's name in the lease (default: host and PID).")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Port for /healthz, /livez and /metrics (0: none).")
@click.pass_context
def relay_command(ctx: click.Context, name: str | None, metrics_port: int | None) -> None:
    """Distributed mode: read the change stream and publish every change to the
    item-changes topic for `esrec indexer worker`s. Run two or more: one leads (a lease
    in MongoDB, fenced by an epoch), the others stand by and take over when it stops."""
    configure()
    collect_cycles_rarely()
    services = services_from(ctx)
    install_signal_handlers(services.stop, services.settings.indexer.shutdown_timeout_s)
    relay = services.relay(name or f"{socket.gethostname()}-{os.getpid()}")
    _serve_health(ctx, services, metrics_port, relay.metrics.registry)
    relay.run()


@indexer.command("worker")
@click.option("--on-history-lost", type=click.Choice(["fail", "resync"]),
              help="If an offset fell off the topic: stop (default) or rebuild.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Port for /healthz, /livez and /metrics (0: none).")
@click.pass_context
def worker_command(ctx: click.Context, on_history_lost: str | None,
                   metrics_port: int | None) -> None:
    """Distributed mode: index a share of the item-changes topic (and of any build's
    backfill chunks) into every active model version, in a Kafka consumer group. Run as
    many as the topic has partitions."""
    configure()
    embedding_process()
    services = services_from(ctx)
    settings = services.settings.indexer
    install_signal_handlers(services.stop, settings.shutdown_timeout_s)
    _serve_health(ctx, services, metrics_port, services.metrics.registry)
    try:  # a server that is not up yet is waited for
        targets = retry(services.active_targets, what="servers",
                        backoff=Backoff(max_s=settings.retry_max_delay_s), stop=services.stop,
                        retry_on=(TransportError, ConnectionFailure), health=services.health)
    except (TransportError, ConnectionFailure):
        return
    services.worker(targets, resync=_history_policy(services, on_history_lost)).run()


@indexer.command("status")
@click.pass_context
def status_command(ctx: click.Context) -> None:
    """Per active version: lag, whether a daemon follows it, MongoDB vs Elasticsearch
    counts; dead letters."""
    from indexer.lifecycle import Versions

    click.echo(json.dumps(Versions(services_from(ctx)).report(), indent=2, default=str))


@indexer.command("purge-tombstones")
@click.option("--older-than-hours", type=click.FloatRange(min=0),
              help="Default: indexer.tombstone_retention_hours (72).")
@click.pass_context
def purge_command(ctx: click.Context, older_than_hours: float | None) -> None:
    """Delete old delete-tombstones from every active index (skips one being backfilled)."""
    from indexer.lifecycle import Versions

    services = services_from(ctx)
    hours = (services.settings.indexer.tombstone_retention_hours if older_than_hours is None
             else older_than_hours)
    cutoff = datetime.now(UTC) - timedelta(hours=hours)
    click.echo(json.dumps({"older_than": cutoff.isoformat(),
                           "deleted": Versions(services).purge_tombstones(cutoff)}))
