"""`esrec models`: the registry (publish, list, show, pull) and the version lifecycle
(build, validate, promote, roll, rollback, retire, status)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click

from esrec.cli.context import mongo_database, services_from, settings_from
from esrec.cli.indexer import progress_bar
from indexer.gates import GateResult, validate
from indexer.lifecycle import VersionError, Versions
from indexer.rollout import roll
from indexer.service import Services
from runtime.logs import configure
from towers.registry import ModelRegistry

ref_argument = click.argument("ref", metavar="NAME@VERSION")


@click.group()
def models() -> None:
    """Model versions: the registry (publish, list, show, pull) and rollouts (build,
    validate, promote, roll, rollback, retire, status)."""


def _registry(ctx: click.Context) -> ModelRegistry:
    return ModelRegistry(mongo_database(ctx), settings_from(ctx).mongo.collections.models)


@models.command("publish")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.pass_context
def publish(ctx: click.Context, directory: Path) -> None:
    """Upload an artifact directory (verified first); a published version is immutable."""
    record = _registry(ctx).publish(directory)
    click.echo(f"{record.ref} {record.state} sha256={record.sha256}")


@models.command("list")
@click.option("--name", help="Only this model.")
@click.pass_context
def list_models(ctx: click.Context, name: str | None) -> None:
    """Every published version with its state."""
    records = _registry(ctx).list(name)
    if not records:
        click.echo("no model versions published yet (esrec models publish DIR)")
    for record in records:
        click.echo(f"{record.ref:<24} {record.state:<10} dims={record.dims:<4} "
                   f"{record.published_at:%Y-%m-%d %H:%M} sha256={record.sha256[:12]}")


@models.command("show")
@ref_argument
@click.pass_context
def show(ctx: click.Context, ref: str) -> None:
    """One version's manifest, state and history, as JSON."""
    record = _registry(ctx).get(ref)
    click.echo(json.dumps({"ref": record.ref, "state": record.state, "sha256": record.sha256,
                           "history": record.history, "manifest": record.manifest},
                          indent=2, default=str))


@models.command("pull")
@ref_argument
@click.pass_context
def pull(ctx: click.Context, ref: str) -> None:
    """Download a version into the local cache (keyed by sha256) and print its path."""
    click.echo(str(_registry(ctx).pull(ref).directory))


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Say what is happening on stderr, and how long it took."""
    click.echo(f"-> {what} ...", err=True)
    started = time.perf_counter()
    yield
    click.echo(f"   {what}: {time.perf_counter() - started:.1f}s", err=True)


def _print_gates(results: list[GateResult]) -> None:
    for result in results:
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.name:<9} {result.detail}")


def _with_services(command: Callable[..., None]) -> Callable[..., None]:
    """Run ``command(services, ...)`` with logging set up."""
    def wrapper(ctx: click.Context, /, **kwargs: object) -> None:
        configure()
        command(services_from(ctx), **kwargs)

    functools.update_wrapper(wrapper, command)
    return click.pass_context(wrapper)


@models.command("build")
@ref_argument
@_with_services
def build(services: Services, ref: str) -> None:
    """Create NAME@VERSION's index and backfill it (resumable); a running `esrec indexer
    run` dual-writes it from the backfill's start. Ends in state ready."""
    with progress_bar(f"build {ref}") as on_progress:
        report = Versions(services).build(ref, on_progress)
    click.echo(json.dumps({"model": ref, "index": report.index, "documents": report.documents,
                           "done": report.done}))
    if not report.done:
        raise VersionError(f"stopped before {ref}'s backfill finished",
                           "run the build again to resume it")


@models.command("validate")
@ref_argument
@_with_services
def validate_command(services: Services, ref: str) -> None:
    """Run the gates (coverage, freshness, vectors, ann, latency); exit 1 if one fails."""
    results = validate(services, services.target(ref))
    _print_gates(results)
    if not all(result.passed for result in results):
        sys.exit(1)


@models.command("promote")
@ref_argument
@_with_services
def promote(services: Services, ref: str) -> None:
    """Point the serving alias at NAME@VERSION's index (one atomic alias call)."""
    previous = Versions(services).promote(ref)
    click.echo(f"serving {ref} (was {previous or 'nothing'})")


@models.command("rollback")
@_with_services
def rollback(services: Services) -> None:
    """Serve the previously serving version again (kept current until retired)."""
    was, now = Versions(services).rollback()
    click.echo(f"serving {now} (rolled back from {was})")


@models.command("retire")
@ref_argument
@click.option("--grace-s", type=click.FloatRange(min=0),
              help="Seconds between stopping writes and deleting the index "
                   "(default: rollout.retire_grace_s).")
@_with_services
def retire(services: Services, ref: str, grace_s: float | None) -> None:
    """Stop indexing NAME@VERSION and delete its index after a grace period (never the
    serving version)."""
    grace = services.settings.rollout.retire_grace_s if grace_s is None else grace_s
    deleted = Versions(services).retire(ref, grace)
    click.echo(f"retired {ref}; deleted {', '.join(deleted) or 'no index'}")


@models.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
@_with_services
def status(services: Services, as_json: bool) -> None:
    """Versions, state, index, live documents, lag, whether an indexer follows each, and
    which one serves."""
    rows = Versions(services).status()
    if as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
        return
    click.echo(f"{'MODEL':<24} {'STATE':<10} {'INDEX':<44} {'DOCS':>7} {'LAG_S':>6} "
               f"{'FOLLOWED':<8}  SERVING")
    for row in rows:
        click.echo(f"{row.ref:<24} {row.state:<10} {row.index or '-':<44} "
                   f"{'-' if row.documents is None else row.documents:>7} "
                   f"{'-' if row.lag_s is None else row.lag_s:>6} "
                   f"{('yes' if row.followed else 'no') if row.index else '-':<8}  "
                   f"{'*' if row.serving else ''}")


@models.command("roll")
@ref_argument
@_with_services
def roll_command(services: Services, ref: str) -> None:
    """Build, validate and promote NAME@VERSION in one command. Refuses to promote when a
    gate fails; rolls back by itself when the post-promote probe fails."""
    with progress_bar(f"build {ref}") as on_progress:
        previous = roll(Versions(services), ref, _step, _print_gates, on_progress)
    click.echo(f"serving {ref} (was {previous or 'nothing'})")
