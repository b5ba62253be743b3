"""`esrec doctor`: are the configured servers fit for esrec?"""

from __future__ import annotations

import sys

import click

from esrec.cli.context import settings_from
from esrec.doctor import run_checks


@click.command()
@click.option(
    "--only", multiple=True, type=click.Choice(["elasticsearch", "mongodb", "kafka"]),
    help="Check only these servers (repeatable).",
)
@click.pass_context
def doctor(ctx: click.Context, only: tuple[str, ...]) -> None:
    """Check that each configured server is reachable and has what esrec needs."""
    results = run_checks(settings_from(ctx), list(only) or None)
    for result in results:
        if result.ok:
            click.echo(f"{result.server:<14} ok    {result.version:<12} "
                       f"{', '.join(result.capabilities)}")
        else:
            click.echo(f"{result.server:<14} FAIL  {result.problem}")
            if result.fix:
                click.echo(f"{'':<14} fix   {result.fix}")
    if not all(result.ok for result in results):
        sys.exit(1)
