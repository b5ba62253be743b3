"""The `esrec` command line: one entry point, a subcommand per job.

Commands print results on stdout and progress or problems on stderr. A problem ends the
command with one plain message and the exit code of its kind (runtime.errors): 1 refused
(fix the input and rerun), 2 bad settings or usage, 3 a server unavailable (retry
later), 4 data lost (resync).
"""

from __future__ import annotations

from pathlib import Path

import click

from esrec.cli import dead_letters
from esrec.cli.context import EsrecGroup, settings_from
from esrec.cli.demo import demo
from esrec.cli.doctor import doctor
from esrec.cli.indexer import indexer
from esrec.cli.models import models
from esrec.cli.recall import recall
from esrec.cli.stack import stack
from esrec.cli.towers import towers


@click.group(cls=EsrecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ESREC_CONFIG",
    help="TOML or YAML settings file (environment variables ESREC_* take precedence).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """esrec: MongoDB -> two-tower item vectors -> Elasticsearch, and fused recall for a feed."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.group()
def config() -> None:
    """Inspect the effective settings."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    click.echo(settings_from(ctx).model_dump_json(indent=2))


@config.command("table")
def config_table() -> None:
    """Print every setting's variable, default and purpose as a Markdown table (the
    README's, generated from the settings model)."""
    from esrec.settings_table import table

    click.echo(table())


for command in (stack, doctor, towers, models, indexer, recall, demo):
    main.add_command(command)
indexer.add_command(dead_letters.catalog)
recall.add_command(dead_letters.events)
