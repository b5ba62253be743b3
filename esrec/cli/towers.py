"""`esrec towers` (data, training, evaluation) and `esrec models` (the registry)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esrec.cli.context import UserError, mongo_database, settings_from
from towers.artifact import ArtifactError, ModelArtifact, export_artifact
from towers.dataset import Collections, Dataset, load_files, load_mongo, write_jsonl, write_mongo
from towers.registry import ModelRegistry, RegistryError


def _collections(ctx: click.Context) -> Collections:
    names = settings_from(ctx).mongo.collections
    return Collections(items=names.items, users=names.users, interactions=names.interactions)


def _load_dataset(ctx: click.Context, data: Path | None) -> Dataset:
    if data is not None:
        try:
            return load_files(data)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(
                f"{error}. Create a dataset with `esrec towers synth --out {data}`") from None
    db = mongo_database(ctx)
    dataset = load_mongo(db, _collections(ctx))
    if not dataset.interactions:
        raise UserError(f"no interactions in MongoDB database {db.name}; load some with "
                        "`esrec towers synth --to-mongo` or pass --data DIR")
    return dataset


_data_option = click.option(
    "--data", type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory with items/users/interactions .jsonl or .parquet (default: MongoDB).")


@click.group()
def towers() -> None:
    """Synthetic data, training and offline evaluation of the two-tower model."""


@towers.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write JSONL files here.")
@click.option("--to-mongo", is_flag=True, help="Load into the configured MongoDB collections.")
@click.option("--items", default=3000, show_default=True, type=click.IntRange(min=20))
@click.option("--users", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def synth(ctx: click.Context, out: Path | None, to_mongo: bool, items: int, users: int,
          seed: int) -> None:
    """Generate a catalog, users and interactions with planted structure."""
    from towers.synth import SynthConfig, generate

    if out is None and not to_mongo:
        raise UserError("say where to put the data: --out DIR and/or --to-mongo")
    dataset = generate(SynthConfig(items=items, users=users, seed=seed))
    if out is not None:
        write_jsonl(dataset, out)
    if to_mongo:
        write_mongo(dataset, mongo_database(ctx), _collections(ctx))
    click.echo(json.dumps({"items": len(dataset.items), "users": len(dataset.users),
                           "interactions": len(dataset.interactions),
                           "out": str(out) if out else None, "mongo": to_mongo}))


@towers.command("train")
@_data_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Empty directory for the artifact, metrics.json and training.png.")
@click.option("--name", default="two-tower", show_default=True)
@click.option("--version", "version", required=True, help="Model version, e.g. 1.")
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--dims", default=64, show_default=True, type=click.IntRange(min=2),
              help="Output vector size.")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def train_command(ctx: click.Context, data: Path | None, out: Path, name: str, version: str,
                  epochs: int, dims: int, batch_size: int, seed: int) -> None:
    """Train, evaluate against most-popular, and export a versioned artifact."""
    from towers.report import training_summary, write_report
    from towers.train import TrainConfig, train

    if (out / "manifest.json").exists():
        raise UserError(f"{out} already holds an artifact; pick a new --out directory")
    dataset = _load_dataset(ctx, data)
    config = TrainConfig(epochs=epochs, dims=dims, batch_size=batch_size, seed=seed)
    result = train(dataset, config)
    summary = training_summary(result, config)
    artifact = export_artifact(result.model, result.featurizer, out, name, version, summary)
    write_report(summary, out, f"{name}@{version}")
    click.echo(json.dumps({"artifact": str(out), "sha256": artifact.sha256,
                           "model": summary["model"], "most_popular": summary["most_popular"],
                           "lift": summary["lift"]}, indent=2))


@towers.command("eval")
@click.option("--artifact", "artifact_dir", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path))
@_data_option
@click.pass_context
def eval_command(ctx: click.Context, artifact_dir: Path, data: Path | None) -> None:
    """HR/Recall/NDCG@10,50,100,200 of exported towers and of most-popular, as JSON."""
    from towers.evaluate import evaluate_artifact

    try:
        artifact = ModelArtifact.load(artifact_dir)
    except ArtifactError as error:
        raise UserError(str(error)) from None
    click.echo(json.dumps({"model_version": artifact.manifest.ref,
                           **evaluate_artifact(artifact, _load_dataset(ctx, data))}, indent=2))


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
    try:
        record = _registry(ctx).publish(directory)
    except (ArtifactError, RegistryError) as error:
        raise UserError(str(error)) from None
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
@click.argument("ref")
@click.pass_context
def show(ctx: click.Context, ref: str) -> None:
    """One version's manifest, state and history, as JSON."""
    try:
        record = _registry(ctx).get(ref)
    except RegistryError as error:
        raise UserError(str(error)) from None
    click.echo(json.dumps({"ref": record.ref, "state": record.state, "sha256": record.sha256,
                           "history": record.history, "manifest": record.manifest},
                          indent=2, default=str))


@models.command("pull")
@click.argument("ref")
@click.pass_context
def pull(ctx: click.Context, ref: str) -> None:
    """Download a version into the local cache (keyed by sha256) and print its path."""
    try:
        artifact = _registry(ctx).pull(ref)
    except (ArtifactError, RegistryError) as error:
        raise UserError(str(error)) from None
    click.echo(str(artifact.directory))
