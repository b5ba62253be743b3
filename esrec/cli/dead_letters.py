"""`esrec indexer dead-letters` and `esrec recall dead-letters`: list, show, redrive."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from esrec.cli.context import mongo_database, services_from, settings_from
from runtime.errors import Refused

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Since(click.ParamType):  # type: ignore[type-arg]
    """A moment: an ISO-8601 date or time (UTC unless it says), or a span back from now
    (90m, 2h, 3d)."""

    name = "since"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if match := _DURATION.match(text):
            amount, unit = match.groups()
            return datetime.now(UTC) - timedelta(seconds=float(amount) * _UNITS[unit])
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither a date (2026-12-01, 2026-12-01T10:00Z) nor a "
                      "span (90m, 2h, 3d)", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


since_option = click.option("--since", type=Since(),
                            help="Only letters parked since then: a date or time, or a span "
                                 "back from now (90m, 2h, 3d).")
reason_option = click.option("--reason", help="Only letters whose reason contains this.")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group("dead-letters")
def catalog() -> None:
    """Catalog documents parked by the indexer: list, show, redrive after a fix."""


@catalog.command("list")
@since_option
@reason_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def catalog_list(ctx: click.Context, since: datetime | None, reason: str | None,
                 limit: int) -> None:
    """The newest parked documents (one line each: when, id, stage, reason)."""
    from indexer.redrive import selection

    letters = services_from(ctx).dead_letters.collection
    query = selection(since, reason)
    click.echo(f"{letters.count_documents(query)} dead letters", err=True)
    for letter in letters.find(query, {"document": 0}).sort("at", -1).limit(limit):
        click.echo(f"{letter['at']:%Y-%m-%d %H:%M:%S}  {letter['doc_id']!s:<24} "
                   f"{letter['stage']:<13} {letter['error']}")


@catalog.command("show")
@click.argument("doc_id")
@click.pass_context
def catalog_show(ctx: click.Context, doc_id: str) -> None:
    """Every dead letter of one document (its id as text; a number is tried as one too),
    with the stored excerpt of the document."""
    letters = services_from(ctx).dead_letters.collection
    ids: list[Any] = [doc_id, *([int(doc_id)] if doc_id.lstrip("-").isdigit() else [])]
    found = list(letters.find({"doc_id": {"$in": ids}}, {"_id": 0}).sort("at", 1))
    if not found:
        raise Refused(f"no dead letter for {doc_id}", "`esrec indexer dead-letters list`")
    _echo_json(found)


@catalog.command("redrive")
@since_option
@reason_option
@click.pass_context
def catalog_redrive(ctx: click.Context, since: datetime | None, reason: str | None) -> None:
    """Index the parked documents again from their current MongoDB state into every
    active version (after a fix); redriven ones leave the dead letters, one that fails
    again is parked anew with the new reason."""
    from indexer.redrive import redrive

    report = redrive(services_from(ctx), since, reason,
                     lambda done: click.echo(f"redrive: {done} items", err=True))
    _echo_json(report.as_dict())


@click.group("dead-letters")
def events() -> None:
    """User events parked by `esrec recall events`: list, show, redrive after a fix."""


def _event_letters(ctx: click.Context) -> Any:
    from recall.redrive import EventDeadLetters

    return EventDeadLetters(settings_from(ctx), mongo_database(ctx))


@events.command("list")
@since_option
@reason_option
@click.pass_context
def events_list(ctx: click.Context, since: datetime | None, reason: str | None) -> None:
    """The letters not redriven yet (one JSON line each: when, where, why)."""
    letters = _event_letters(ctx).pending(since, reason)
    click.echo(f"{len(letters)} dead letters", err=True)
    for letter in letters:
        click.echo(json.dumps(letter.summary()))


@events.command("show")
@click.argument("letter", metavar="PARTITION:OFFSET")
@click.pass_context
def events_show(ctx: click.Context, letter: str) -> None:
    """One pending letter in full (as `list` names it)."""
    found = [one for one in _event_letters(ctx).pending() if one.key == letter]
    if not found:
        raise Refused(f"no pending dead letter {letter}", "`esrec recall dead-letters list`")
    _echo_json({**found[0].summary(), "letter": found[0].body})


@events.command("redrive")
@since_option
@reason_option
@click.pass_context
def events_redrive(ctx: click.Context, since: datetime | None, reason: str | None) -> None:
    """Apply the parked events again through the consumer's own path (after a fix);
    redriven ones leave the list, one that fails again is parked anew."""
    report = _event_letters(ctx).redrive(since, reason, lambda done: click.echo(
        f"redrive: {done} events", err=True))
    _echo_json(report.as_dict())
