"""`esrec towers`: synthetic data, training and offline evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esrec.cli.context import mongo_database, settings_from
from runtime.errors import Refused
from towers.artifact import ModelArtifact, export_artifact
from towers.dataset import Collections, Dataset, load_files, load_mongo, write_jsonl, write_mongo

if TYPE_CHECKING:  # torch is imported only by the commands that train
    from towers.train import EpochLog


def _collections(ctx: click.Context) -> Collections:
    names = settings_from(ctx).mongo.collections
    return Collections(items=names.items, users=names.users, interactions=names.interactions)


def _load_dataset(ctx: click.Context, data: Path | None) -> Dataset:
    if data is not None:
        try:
            return load_files(data)
        except (FileNotFoundError, ValueError) as error:
            raise Refused(str(error), f"create a dataset with `esrec towers synth --out {data}`"
                          ) from None
    db = mongo_database(ctx)
    dataset = load_mongo(db, _collections(ctx))
    if not dataset.interactions:
        raise Refused(f"no interactions in MongoDB database {db.name}",
                      "load some with `esrec towers synth --to-mongo` or pass --data DIR")
    return dataset


_data_option = click.option(
    "--data", type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory with items/users/interactions .jsonl or .parquet (default: MongoDB).")


def print_epoch(log: EpochLog) -> None:
    """One line per epoch on stderr (stdout stays for results)."""
    click.echo(f"epoch {log.epoch}: loss {log.loss:.4f}  {log.seconds:.1f}s  "
               + "  ".join(f"{name} {value:.3f}" for name, value in log.metrics.items()
                           if name.startswith("hr@")), err=True)


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
        raise click.UsageError("say where to put the data: --out DIR and/or --to-mongo")
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
        raise Refused(f"{out} already holds an artifact", "pick a new --out directory")
    dataset = _load_dataset(ctx, data)
    config = TrainConfig(epochs=epochs, dims=dims, batch_size=batch_size, seed=seed)
    result = train(dataset, config, on_epoch=print_epoch)
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

    artifact = ModelArtifact.load(artifact_dir)
    click.echo(json.dumps({"model_version": artifact.manifest.ref,
                           **evaluate_artifact(artifact, _load_dataset(ctx, data))}, indent=2))
