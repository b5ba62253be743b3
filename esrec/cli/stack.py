"""`esrec stack`: the local stand-in servers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from esrec.stack import KAFKA_ENGINES, SERVICES, LocalStack, env_exports

DEFAULT_STACK_DIR = Path(".esrec/stack")


@click.group()
def stack() -> None:
    """Run the local servers: Apache Kafka and the ES / MongoDB stand-ins (see README)."""


_stack_dir = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STACK_DIR, show_default=True, help="Where PID files, logs and data live.",
)


@stack.command("up")
@_stack_dir
@click.option("--es-port", type=click.IntRange(1, 65535),
              help="Elasticsearch port (default 9200).")
@click.option("--mongo-port", type=click.IntRange(1, 65535), help="MongoDB port (default 27017).")
@click.option("--kafka-port", type=click.IntRange(1, 65535), help="Kafka port (default 9092).")
@click.option("--free-ports", is_flag=True, help="Pick free ports instead of the defaults.")
@click.option(
    "--only", multiple=True, type=click.Choice(sorted(SERVICES)),
    help="Start only these servers (repeatable).",
)
@click.option(
    "--kafka", "kafka", type=click.Choice(KAFKA_ENGINES), default="apache", show_default=True,
    help="apache: Apache Kafka itself (needs Java 17+; the jars are fetched once by Maven); "
         "stand-in: noida-db; tansu: a stand-in that expires killed consumers. Without Java "
         "or Maven, apache says so and uses the stand-in.",
)
def stack_up(
    directory: Path, es_port: int | None, mongo_port: int | None, kafka_port: int | None,
    free_ports: bool, only: tuple[str, ...], kafka: str,
) -> None:
    """Start the servers on loopback and wait until each answers (idempotent).

    Prints `export` lines for the settings; `eval "$(esrec stack up --free-ports)"` applies them.
    """
    ports = {
        name: port
        for name, port in (("elasticsearch", es_port), ("mongodb", mongo_port),
                           ("kafka", kafka_port))
        if port is not None
    }
    records = LocalStack(directory).up(
        services=only or tuple(SERVICES), ports=ports, pick_free_ports=free_ports,
        kafka=kafka,
    )
    for name, record in records.items():
        click.echo(f"{name:<14} up   {record.url}  (pid {record.pid}, {record.engine})", err=True)
    click.echo("\n".join(env_exports(records)))


@stack.command("down")
@_stack_dir
def stack_down(directory: Path) -> None:
    """Stop every server started from DIR, by PID (data is kept)."""
    stopped = LocalStack(directory).down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", err=True)


@stack.command("status")
@_stack_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_status(directory: Path, as_json: bool) -> None:
    """Show which servers run, where, what they are and their PIDs. Exit 1 if any is down."""
    status = LocalStack(directory).status()
    if as_json:
        click.echo(json.dumps({n: r.__dict__ if r else None for n, r in status.items()}))
    else:
        for name, record in status.items():
            line = f"up   {record.url}  (pid {record.pid}, {record.engine})" if record else "down"
            click.echo(f"{name:<14} {line}")
    if not all(status.values()):
        sys.exit(1)
