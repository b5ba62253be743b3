"""What every subcommand shares: settings loaded once per run, and user-facing errors."""

from __future__ import annotations

import click
from pymongo.database import Database

from esrec.clients import elasticsearch_client, mongo_client
from esrec.settings import Settings, SettingsError, load_settings
from indexer.service import Services


class UserError(click.ClickException):
    """A problem with a plain explanation; click prints it without a traceback."""


def settings_from(ctx: click.Context) -> Settings:
    """Load settings once per invocation; bad settings exit 2 naming the field and the fix."""
    if ctx.obj.get("settings") is None:
        try:
            ctx.obj["settings"] = load_settings(ctx.obj.get("config"))
        except SettingsError as error:
            click.echo(f"esrec: invalid settings\n{error}", err=True)
            ctx.exit(2)
    return ctx.obj["settings"]


def mongo_database(ctx: click.Context) -> Database:
    """The configured MongoDB database, one client per invocation."""
    if ctx.obj.get("mongo") is None:
        settings = settings_from(ctx)
        ctx.obj["mongo"] = mongo_client(settings.mongo)[settings.mongo.database]
    return ctx.obj["mongo"]


def services_from(ctx: click.Context) -> Services:
    """Servers, registry and names wired for the indexer and the rollout commands."""
    settings = settings_from(ctx)
    return Services.create(settings, elasticsearch_client(settings.es), mongo_database(ctx))
