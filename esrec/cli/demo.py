"""`esrec demo`: the whole mission end to end on local stand-ins (or configured servers)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esrec.cli.context import settings_from
from esrec.lifetime import exit_on_sigterm
from esrec.settings import Settings
from esrec.stack import LocalStack
from runtime.logs import configure

if TYPE_CHECKING:  # the demo (and torch) loads when it runs, not for --help
    from esrec.demo import Demo

SERVER_VARIABLES = ("ESREC_ES__HOSTS", "ESREC_MONGO__URI", "ESREC_KAFKA__BOOTSTRAP_SERVERS")
# the latency gate on the stand-in Elasticsearch: its kNN is a full scan (~30-100 ms for
# 3000 vectors) and the demo may share two busy cores; 100 queries make a p99 a p99
DEMO_MAX_P99_MS = 2000.0
DEMO_ANN_QUERIES = 100


def _namespaced(settings: Settings, namespace: str) -> Settings:
    """The demo's own database, indices, alias, topics and group: never production's."""
    run = uuid.uuid4().hex[:6]
    return settings.model_copy(update={
        "mongo": settings.mongo.model_copy(update={"database": namespace.replace("-", "_")}),
        "index": settings.index.model_copy(update={"prefix": namespace,
                                                   "serving_alias": f"{namespace}-items"}),
        "kafka": settings.kafka.model_copy(update={"topics": settings.kafka.topics.model_copy(
            update={"user_events": f"{namespace}.{run}.user-events",
                    "dead_letters": f"{namespace}.{run}.dead-letters"})}),
        "recall": settings.recall.model_copy(update={
            "consumer_group": f"{namespace}-{run}"}),
        "rollout": settings.rollout.model_copy(update={
            "max_p99_ms": DEMO_MAX_P99_MS, "ann_queries": DEMO_ANN_QUERIES}),
    })


def _clean(demo: Demo) -> None:
    """Start from nothing: the namespace's database and indices from an earlier run go."""
    from indexer.layout import delete_indices

    demo.db.client.drop_database(demo.db.name)
    delete_indices(demo.es, f"{demo.settings.index.prefix}-*")


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("esrec-demo"), show_default=True,
              help="Where the report, plots, models and logs go.")
@click.option("--items", default=3000, show_default=True, type=click.IntRange(min=100))
@click.option("--users", default=2000, show_default=True, type=click.IntRange(min=50))
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--namespace", default="esrec-demo", show_default=True,
              help="Prefix of the database, indices, alias and topics the demo uses.")
@click.pass_context
def demo(ctx: click.Context, out: Path, items: int, users: int, epochs: int,
         namespace: str) -> None:
    """Run the whole mission end to end: data, training, indexing, events, recall, a model
    roll and a rollback, with a check at every step; exit 0 only if all pass.

    Starts the local servers (Apache Kafka, the ES and MongoDB stand-ins) unless servers
    are configured (ESREC_* or --config).
    """
    from esrec.demo import Demo, DemoFailed, DemoSize

    configure("WARNING")
    started = time.perf_counter()
    configured = ctx.obj.get("config") is not None or any(v in os.environ
                                                          for v in SERVER_VARIABLES)
    stack = None
    with exit_on_sigterm():  # a SIGTERM stops the servers and processes it started
        if configured:
            settings = settings_from(ctx)
        else:
            click.echo("== no servers configured: starting the local servers", err=True)
            stack = LocalStack(out / "stack", bound=True)
            urls = {name: record.url for name, record in stack.up(pick_free_ports=True).items()}
            settings = Settings(es={"hosts": [urls["elasticsearch"]]},
                                mongo={"uri": urls["mongodb"]},
                                kafka={"bootstrap_servers": [urls["kafka"]]})
        try:
            runner = Demo(_namespaced(settings, namespace), out, DemoSize(items, users, epochs))
            _clean(runner)
            try:
                report = runner.run()
            except DemoFailed as error:
                raise DemoFailed(f"demo check failed: {error.message}",
                                 f"see {runner.report}") from None
        finally:
            if stack is not None:
                stack.down()
                click.echo("== local servers stopped", err=True)
    click.echo(f"demo passed in {time.perf_counter() - started:.0f}s; report: {report}")
