"""`esrec models`: the registry (publish, list, show, pull) and the version lifecycle
(build, validate, promote, roll [--canary], canary status|abort, rollback, retire,
status)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esrec.cli.context import mongo_database, services_from, settings_from
from esrec.cli.indexer import progress_bar
from runtime.logs import configure

if TYPE_CHECKING:  # the core packages (and torch) load in the commands, not for --help
    from indexer.gates import GateResult
    from indexer.service import Services
    from towers.registry import ModelRegistry

ref_argument = click.argument("ref", metavar="NAME@VERSION")


@click.group()
def models() -> None:
    """Model versions: the registry (publish, list, show, pull) and rollouts (build,
    validate, promote, roll, rollback, retire, status)."""


def _registry(ctx: click.Context) -> ModelRegistry:
    from towers.registry import ModelRegistry

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
    from indexer.lifecycle import VersionError, Versions

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
    from indexer.gates import validate

    results = validate(services, services.target(ref))
    _print_gates(results)
    if not all(result.passed for result in results):
        sys.exit(1)


@models.command("promote")
@ref_argument
@_with_services
def promote(services: Services, ref: str) -> None:
    """Point the serving alias at NAME@VERSION's index (one atomic alias call)."""
    from indexer.lifecycle import Versions

    previous = Versions(services).promote(ref)
    click.echo(f"serving {ref} (was {previous or 'nothing'})")


@models.command("rollback")
@_with_services
def rollback(services: Services) -> None:
    """Serve the previously serving version again (kept current until retired)."""
    from indexer.lifecycle import Versions

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
    from indexer.lifecycle import Versions

    grace = services.settings.rollout.retire_grace_s if grace_s is None else grace_s
    deleted = Versions(services).retire(ref, grace)
    click.echo(f"retired {ref}; deleted {', '.join(deleted) or 'no index'}")


@models.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
@_with_services
def status(services: Services, as_json: bool) -> None:
    """Versions, state, index, live documents, lag, whether an indexer follows each, and
    which one serves."""
    from indexer.lifecycle import Versions

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


class Share(click.ParamType):  # type: ignore[type-arg]
    """A share of users: 10%, or 0.1."""

    name = "share"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            share = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
        except ValueError:
            self.fail(f"{value!r} is not a share; write 10% or 0.1", param, ctx)
        if not 0 < share < 1:
            self.fail(f"{value!r}: a canary share is between 0% and 100%", param, ctx)
        return share


def _print_figures(figures: dict[str, object], results: list[GateResult]) -> None:
    click.echo(f"   canary {json.dumps(figures)}  " + ", ".join(
        f"{r.name} {'ok' if r.passed else 'FAIL'}" for r in results), err=True)


@models.command("roll")
@ref_argument
@click.option("--canary", "share", type=Share(),
              help="Before promoting, serve this share of users (e.g. 10%) from NAME@VERSION "
                   "beside the serving version and compare them live; promote or roll back "
                   "by the rollout.canary_* thresholds.")
@click.option("--canary-duration-s", type=click.FloatRange(min=0, min_open=True),
              help="How long the canary runs (default: rollout.canary_duration_s).")
@click.option("--watch-s", type=click.FloatRange(min=0),
              help="After the promote, watch recall's figures for the new version this long "
                   "and roll back if a rule breaks (default: rollout.watch_s; 0: no watch).")
@_with_services
def roll_command(services: Services, ref: str, share: float | None,
                 canary_duration_s: float | None, watch_s: float | None) -> None:
    """Build, validate (and canary) and promote NAME@VERSION in one command. Refuses to
    promote when a gate or the canary fails; rolls back by itself when the post-promote
    probe or the watch after it fails."""
    from indexer.lifecycle import Versions
    from indexer.rollout import CanaryPlan, roll

    settings = services.settings.rollout
    plan = None if share is None else CanaryPlan(
        share, canary_duration_s or settings.canary_duration_s)
    with progress_bar(f"build {ref}") as on_progress:
        previous = roll(Versions(services), ref, _step, _print_gates, on_progress, plan,
                        _print_figures, watch_s)
    click.echo(f"serving {ref} (was {previous or 'nothing'})")


@models.group("canary")
def canary() -> None:
    """The running canary roll: its figures, or stop it."""


@canary.command("status")
@_with_services
def canary_status(services: Services) -> None:
    """The latest canary: versions, share, state, figures per arm, as JSON."""
    from indexer.canary_store import CanaryStore

    current = CanaryStore(services.db, services.settings).current()
    if current is None:
        click.echo("no canary has run (esrec models roll NAME@VERSION --canary 10%)")
        return
    click.echo(json.dumps({**asdict(current), "running": current.running()}, indent=2,
                          default=str))


@canary.command("abort")
@_with_services
def canary_abort(services: Services) -> None:
    """Stop the running canary now: every user goes back to the serving version and the
    candidate back to ready."""
    from indexer.canary import abort
    from indexer.canary_store import CanaryStore
    from indexer.lifecycle import Versions

    stopped = abort(Versions(services), CanaryStore(services.db, services.settings))
    click.echo(f"aborted the canary of {stopped.candidate}; {stopped.baseline} serves "
               "everyone")
