"""`esrec indexer`: backfill a version's index, run the daemon, show its status."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta

import click
from elastic_transport import TransportError
from pymongo.errors import ConnectionFailure, PyMongoError

from esrec.cli.context import UserError, services_from
from esrec.logs import configure
from esrec.process import install_signal_handlers, serve_http
from esrec.retry import Backoff, retry
from indexer.backfill import backfill, in_progress
from indexer.checkpoint import lag_seconds
from indexer.daemon import MissingCheckpoint
from indexer.dead_letters import ErrorBudgetExceeded
from indexer.layout import LIVE, purge_tombstones, resolve_alias, switch_alias, version_alias
from indexer.pipeline import Target
from indexer.service import MissingIndex, Services
from indexer.sink import TransientBulkError
from indexer.source import HistoryLost, StreamInvalidated
from towers.artifact import ArtifactError
from towers.registry import RegistryError

log = logging.getLogger("esrec.indexer")


@click.group()
def indexer() -> None:
    """The change-stream indexer: MongoDB items -> item tower -> Elasticsearch."""


@indexer.command("backfill")
@click.argument("ref")
@click.pass_context
def backfill_command(ctx: click.Context, ref: str) -> None:
    """Fill REF's index (NAME@VERSION) from a scan of the items; resumable after a crash."""
    configure()
    services = services_from(ctx)
    install_signal_handlers(services.stop, services.settings.indexer.shutdown_timeout_s)
    try:
        try:
            target = services.target(ref)
        except MissingIndex:
            target = services.new_generation(ref, point_alias=True)
    except (RegistryError, ArtifactError) as error:
        raise UserError(str(error)) from None
    report = backfill(services.items, services.pipeline([target]), services.checkpoints,
                      target.index, services.stop,
                      batch_size=services.settings.indexer.batch_max_docs)
    click.echo(json.dumps({"model": ref, "index": report.index, "documents": report.documents,
                           "operation_time": report.operation_time.time,
                           "resumed": report.resumed_from is not None, "done": report.done}))
    if not report.done:
        sys.exit(1)


def _resync(services: Services, targets: list[Target]) -> list[Target]:
    """Rebuild every target into a fresh index, then switch its aliases atomically."""
    rebuilt = []
    for old in targets:
        manifest = old.artifact.manifest
        fresh = services.new_generation(manifest.ref, point_alias=False)
        report = backfill(services.items, services.pipeline([fresh]), services.checkpoints,
                          fresh.index, services.stop)
        if not report.done:
            raise click.Abort()
        switch_alias(services.es, version_alias(services.settings.index.prefix, manifest.name,
                                                manifest.version), fresh.index)
        serving = services.settings.index.serving_alias
        if resolve_alias(services.es, serving) == old.index:
            switch_alias(services.es, serving, fresh.index)
        log.warning("resynced after a history gap", extra={"old": old.index, "new": fresh.index})
        rebuilt.append(fresh)
    return rebuilt


@indexer.command("run")
@click.option("--model", "refs", multiple=True,
              help="NAME@VERSION to index (repeatable); default: every active version, "
              "following the registry live as versions are built and retired.")
@click.option("--on-history-lost", type=click.Choice(["fail", "resync"]),
              help="If the resume point fell off the oplog: stop (default) or rebuild.")
@click.option("--metrics-port", type=int, help="Port for /healthz and /metrics (0: none).")
@click.pass_context
def run_command(ctx: click.Context, refs: tuple[str, ...], on_history_lost: str | None,
                metrics_port: int | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (drains, then saves a final checkpoint)."""
    configure()
    services = services_from(ctx)
    settings = services.settings.indexer
    install_signal_handlers(services.stop, settings.shutdown_timeout_s)
    try:  # a server that is not up yet is waited for, like one that goes away later
        targets = retry(lambda: [services.target(r) for r in refs] or services.active_targets(),
                        what="resolve targets", backoff=Backoff(max_s=settings.retry_max_delay_s),
                        stop=services.stop, retry_on=(TransportError, ConnectionFailure))
    except (RegistryError, ArtifactError, MissingIndex) as error:
        raise UserError(str(error)) from None
    except (TransportError, ConnectionFailure):
        return  # stopped while waiting
    if not targets:
        raise UserError("no model version has an index yet; run "
                        "`esrec indexer backfill NAME@VERSION` first")
    port = settings.metrics_port if metrics_port is None else metrics_port
    daemon = services.indexer(targets, follow=not refs)
    if port:
        serve_http(port, services.metrics.registry, daemon.health)
    while True:
        try:
            daemon.run()
            return
        except HistoryLost as error:
            if (on_history_lost or settings.on_history_lost) != "resync":
                raise UserError(str(error)) from None
            log.error("history lost; resyncing into fresh indices", extra={"error": str(error)})
            daemon = services.indexer(_resync(services, daemon.pipeline.targets),
                                      follow=not refs)
        except (StreamInvalidated, ErrorBudgetExceeded, MissingCheckpoint) as error:
            raise UserError(str(error)) from None
        except (TransientBulkError, TransportError, PyMongoError):
            if services.stop.is_set():  # stopped mid-retry: the batch will be replayed
                log.info("stopped before the last batch was acknowledged; it will be replayed")
                return
            raise


@indexer.command("status")
@click.pass_context
def status_command(ctx: click.Context) -> None:
    """Per active version: checkpoint, lag, MongoDB vs Elasticsearch counts; dead letters."""
    services = services_from(ctx)
    items = services.items.count_documents({})
    versions = []
    for target in services.active_targets():
        checkpoint = services.checkpoints.describe(target.index) or {}
        cluster_time = checkpoint.get("cluster_time")
        services.es.indices.refresh(index=target.index)
        versions.append({
            "model": target.artifact.manifest.ref, "index": target.index,
            "checkpoint_cluster_time": cluster_time.time if cluster_time else None,
            "checkpoint_age_s": round(time.time() - checkpoint["updated_at"].timestamp(), 1)
            if checkpoint.get("updated_at") else None,
            "lag_s": lag_seconds(checkpoint, time.time()),
            "indexed": services.es.count(index=target.index, query=LIVE)["count"],
        })
    dead_letters = services.dead_letters
    click.echo(json.dumps({
        "mongo_items": items, "versions": versions,
        "dead_letters": dead_letters.count(),
        "latest_dead_letters": [{"doc_id": str(d["doc_id"]), "stage": d["stage"],
                                 "error": d["error"]} for d in dead_letters.latest(3)],
    }, indent=2))


@indexer.command("purge-tombstones")
@click.option("--older-than-hours", type=click.FloatRange(min=0),
              help="Default: indexer.tombstone_retention_hours (72).")
@click.pass_context
def purge_command(ctx: click.Context, older_than_hours: float | None) -> None:
    """Delete old delete-tombstones from every active index (skips one being backfilled)."""
    services = services_from(ctx)
    hours = (services.settings.indexer.tombstone_retention_hours if older_than_hours is None
             else older_than_hours)
    cutoff = datetime.now(UTC) - timedelta(hours=hours)
    report = {}
    for target in services.active_targets():
        if in_progress(services.checkpoints, target.index):
            report[target.index] = "skipped: a backfill is writing to it"
            continue
        report[target.index] = purge_tombstones(services.es, target.index, cutoff)
    click.echo(json.dumps({"older_than": cutoff.isoformat(), "deleted": report}))
