"""`esrec models build|validate|promote|rollback|retire|status|roll`: version rollouts."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from elastic_transport import TransportError

from esrec.cli.context import UserError, services_from
from esrec.cli.towers import models
from esrec.logs import configure
from indexer.gates import GateResult, probe_serving, validate
from indexer.service import MissingIndex, Services
from indexer.versions import VersionError, Versions
from towers.artifact import ArtifactError
from towers.registry import RegistryError

ref_argument = click.argument("ref", metavar="NAME@VERSION")


@contextmanager
def _plain_errors() -> Iterator[None]:
    """Lifecycle refusals and unreachable servers as one line, never a traceback."""
    try:
        yield
    except (VersionError, RegistryError, ArtifactError, MissingIndex) as error:
        raise UserError(str(error)) from None
    except TransportError as error:
        raise UserError(f"Elasticsearch: {error}") from None


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Say what is happening on stderr, and how long it took."""
    click.echo(f"-> {what} ...", err=True)
    started = time.perf_counter()
    yield
    click.echo(f"   {what}: {time.perf_counter() - started:.1f}s", err=True)


def _print_gates(results: list[GateResult]) -> bool:
    for result in results:
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.name:<9} {result.detail}")
    return all(result.passed for result in results)


def _build(services: Services, ref: str) -> None:
    report = Versions(services).build(ref)
    click.echo(json.dumps({"model": ref, "index": report.index, "documents": report.documents,
                           "done": report.done}))
    if not report.done:
        raise UserError(f"stopped before {ref}'s backfill finished; run the build again to "
                        "resume it")


def _validate(services: Services, ref: str) -> bool:
    return _print_gates(validate(services, services.target(ref)))


def _with_services(command: Callable[..., None]) -> Callable[..., None]:
    """Run ``command(services, ...)`` with logging set up and plain errors."""
    @click.pass_context
    @functools.wraps(command)
    def wrapper(ctx: click.Context, **kwargs: object) -> None:
        configure()
        with _plain_errors():
            command(services_from(ctx), **kwargs)
    return wrapper


@models.command("build")
@ref_argument
@_with_services
def build(services: Services, ref: str) -> None:
    """Create NAME@VERSION's index and backfill it (resumable); a running `esrec indexer
    run` dual-writes it from the backfill's start. Ends in state ready."""
    _build(services, ref)


@models.command("validate")
@ref_argument
@_with_services
def validate_command(services: Services, ref: str) -> None:
    """Run the gates (coverage, freshness, vectors, ann, latency); exit 1 if one fails."""
    if not _validate(services, ref):
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
    """Versions, state, index, live documents, lag and which one serves."""
    rows = Versions(services).status()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.__dict__))
        return
    click.echo(f"{'MODEL':<24} {'STATE':<10} {'INDEX':<44} {'DOCS':>7} {'LAG_S':>6}  SERVING")
    for row in rows:
        click.echo(f"{row.ref:<24} {row.state:<10} {row.index or '-':<44} "
                   f"{'-' if row.documents is None else row.documents:>7} "
                   f"{'-' if row.lag_s is None else row.lag_s:>6}  {'*' if row.serving else ''}")


@models.command("roll")
@ref_argument
@_with_services
def roll(services: Services, ref: str) -> None:
    """Build, validate and promote NAME@VERSION in one command. Refuses to promote when a
    gate fails; rolls back by itself when the post-promote probe fails."""
    versions = Versions(services)
    if services.registry.get(ref).state not in ("ready", "serving"):
        with _step(f"build {ref}"):
            _build(services, ref)
    with _step(f"validate {ref}"):
        passed = _validate(services, ref)
    if not passed:
        raise UserError(f"not promoting {ref}: a gate failed (above); "
                        f"{versions.serving() or 'nothing'} keeps serving")
    with _step(f"promote {ref}"):
        previous = versions.promote(ref, reason="roll")
    with _step("probe the serving alias"):
        probe = probe_serving(services, ref)
        _print_gates([probe])
    if not probe.passed:
        if previous is None:
            raise UserError(f"the post-promote probe failed and no earlier version to roll "
                            f"back to; {ref} serves")
        versions.promote(previous, reason=f"automatic rollback: {probe.detail}")
        raise UserError(f"the post-promote probe failed; rolled back to {previous}")
    click.echo(f"serving {ref} (was {previous or 'nothing'})")
