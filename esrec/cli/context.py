"""What every subcommand shares: settings loaded once per run, clients built from them,
and the one place where errors become an exit code and a plain message."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from esrec.settings import Settings, load_settings
from runtime.clients import MongoDatabase, elasticsearch_client, mongo_client, server_error
from runtime.errors import EXIT_CODES, EsrecError, Kind
from runtime.service import collect_cycles_rarely

if TYPE_CHECKING:  # commands import the core packages (and torch) themselves, when run
    from indexer.service import Services


def embedding_process() -> None:
    """What a long-running process that embeds (items or users) sets first: the
    collector's pace, one torch thread (towers imported here: `esrec --help` stays
    light)."""
    from towers.artifact import use_one_torch_thread

    collect_cycles_rarely()
    use_one_torch_thread()


def settings_from(ctx: click.Context) -> Settings:
    """Load settings once per invocation (bad settings: a SettingsError, exit 2)."""
    root = ctx.find_root()
    if root.obj.get("settings") is None:
        root.obj["settings"] = load_settings(root.obj.get("config"))
    settings: Settings = root.obj["settings"]
    return settings


def mongo_database(ctx: click.Context) -> MongoDatabase:
    """The configured MongoDB database, one client per invocation."""
    root = ctx.find_root()
    if root.obj.get("mongo") is None:
        settings = settings_from(ctx)
        root.obj["mongo"] = mongo_client(settings.mongo)[settings.mongo.database]
    database: MongoDatabase = root.obj["mongo"]
    return database


def services_from(ctx: click.Context) -> Services:
    """Servers, registry and names wired for the indexer and the rollout commands."""
    from indexer.service import Services

    settings = settings_from(ctx)
    return Services.create(settings, elasticsearch_client(settings.es), mongo_database(ctx))


def fail(error: EsrecError) -> NoReturn:
    """Say what went wrong in one line (settings: a line per problem) and exit by kind."""
    if error.kind is Kind.SETTINGS:
        click.echo(f"esrec: invalid settings\n{error.message}", err=True)
    else:
        click.echo(f"esrec: {error.message}", err=True)
    if error.hint:
        click.echo(f"  what to do: {error.hint}", err=True)
    sys.exit(EXIT_CODES[error.kind])


class EsrecGroup(click.Group):
    """The `esrec` group: every error of esrec's family, and every server error, ends the
    command with its kind's exit code and a plain message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EsrecError as error:
            fail(error)
        except Exception as error:
            translated = server_error(error)
            if translated is None:
                raise
            fail(translated)
