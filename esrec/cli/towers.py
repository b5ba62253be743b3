"""`esrec towers`: synthetic data, training and offline evaluation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esrec.cli.context import mongo_database, settings_from
from runtime.errors import Refused
from towers.dataset import Collections, Dataset, load_files, load_mongo, write_jsonl, write_mongo
from towers.features import FeatureSpec

if TYPE_CHECKING:  # torch is imported only by the commands that train
    from towers.train import EpochLog


def _collections(ctx: click.Context) -> Collections:
    names = settings_from(ctx).mongo.collections
    return Collections(items=names.items, users=names.users, interactions=names.interactions)


def _spec(path: Path) -> FeatureSpec:
    """A feature spec from YAML or JSON, or a one-line refusal naming the problem."""
    import yaml
    from pydantic import ValidationError

    try:
        return FeatureSpec.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as error:
        raise Refused(f"{path} is not a feature spec: {str(error).splitlines()[0]}",
                      "see the spec in a model's manifest.json (feature_spec) for the "
                      "shape") from None


def _load_dataset(ctx: click.Context, data: Path | None,
                  related: Sequence[str] = ()) -> Dataset:
    """From files or MongoDB, with the ``related`` collections a spec joins items with."""
    if data is not None:
        return load_files(data, related)
    db = mongo_database(ctx)
    dataset = load_mongo(db, _collections(ctx), related)
    if not dataset.interactions:
        raise Refused(f"no interactions in MongoDB database {db.name}",
                      "load some with `esrec towers synth --to-mongo` or pass --data DIR")
    return dataset


_data_option = click.option(
    "--data", type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory with items/users/interactions .jsonl or .parquet (default: MongoDB).")


def print_epoch(log: EpochLog) -> None:
    """One line per epoch on stderr (stdout stays for results)."""
    validation = log.validation.get("hr@100")
    click.echo(f"epoch {log.epoch}: loss {log.loss:.4f}  {log.seconds:.1f}s  "
               + (f"validation hr@100 {validation:.3f}  " if validation is not None else "")
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


@towers.command("import")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The mapping of files and columns (YAML/JSON; see bench/movielens.yaml).")
@click.option("--data", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The directory the config's paths are relative to.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the training data format (JSONL) here.")
@click.option("--to-mongo/--no-mongo", default=True, show_default=True,
              help="Upsert items, users and interactions into the configured MongoDB.")
@click.option("--to-kafka", is_flag=True,
              help="Replay the interactions as user events on the user-events topic, so "
                   "`esrec recall events` builds user state from them.")
@click.option("--max-bad-ratio", default=0.5, show_default=True,
              type=click.FloatRange(0, 1),
              help="Refuse (write nothing) when more of a file's rows than this are bad: "
                   "a mapping that does not fit the files.")
@click.pass_context
def import_command(ctx: click.Context, config_path: Path, data: Path, out: Path | None,
                   to_mongo: bool, to_kafka: bool, max_bad_ratio: float) -> None:
    """Import an interaction log, a catalog and user attributes, mapped by a config."""
    from towers.importer import ImportConfig, import_dataset

    def progress(stem: str, rows: int) -> None:
        click.echo(f"import: {stem}: {rows} rows", err=True)

    dataset, report = import_dataset(ImportConfig.load(config_path), data, progress)
    summary = {"items": len(dataset.items), "users": len(dataset.users),
               "interactions": len(dataset.interactions), **report.as_dict()}
    worst = report.worst_bad_ratio()
    if worst[1] > max_bad_ratio or not dataset.interactions:
        click.echo(json.dumps(summary, indent=2))
        raise Refused(f"{worst[0] or 'the interactions'}: {worst[1]:.0%} of the rows are bad "
                      f"(--max-bad-ratio {max_bad_ratio:g}) or nothing is left to import",
                      "check the config's column names against the files' headers")
    if out is not None:
        write_jsonl(dataset, out)
    if to_mongo:
        write_mongo(dataset, mongo_database(ctx), _collections(ctx), replace=False,
                    on_progress=lambda name, done: progress(f"mongodb {name}", done))
    if to_kafka:
        from recall.replay import replay

        summary["events_sent"] = replay(settings_from(ctx), dataset.interactions,
                                        lambda sent: progress("kafka events", sent))
    click.echo(json.dumps(summary, indent=2))


@towers.command("train")
@_data_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Empty directory for the artifact, metrics.json and training.png.")
@click.option("--name", default="two-tower", show_default=True)
@click.option("--version", "version", required=True, help="Model version, e.g. 1.")
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--dims", default=64, show_default=True, type=click.IntRange(min=2),
              help="Output vector size.")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(min=2),
              help="Examples per step; the other examples' items are the negatives.")
@click.option("--learning-rate", default=3e-3, show_default=True,
              type=click.FloatRange(min=0, min_open=True))
@click.option("--temperature", default=0.05, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Softmax temperature over unit-length dot products.")
@click.option("--max-examples-per-user", default=0, show_default=True,
              type=click.IntRange(min=0),
              help="Keep only each user's newest N examples (0: all).")
@click.option("--patience", default=2, show_default=True, type=click.IntRange(min=0),
              help="Stop after N epochs without a better validation HR@100 (0: never); "
                   "the best epoch is exported.")
@click.option("--example-age/--no-example-age", default=False, show_default=True,
              help="Feed each example's age to the user tower (0 when serving): only for "
                   "logs whose every user is served right after them (see README).")
@click.option("--cold-start", type=click.Choice(["content", "neighbours", "auto"]),
              default="content", show_default=True,
              help="How items the model does not know by id are embedded: the content-only "
                   "vector, the mean of the nearest known items, or auto (measured on "
                   "held-out new items: one more training).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True,
                                                    path_type=Path),
              help="The feature spec (YAML or JSON: item, user, relations); default: the "
                   "built-in spec for catalogs of id, category, tags, title, price.")
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def train_command(ctx: click.Context, data: Path | None, out: Path, name: str, version: str,
                  epochs: int, dims: int, batch_size: int, learning_rate: float,
                  temperature: float, max_examples_per_user: int, patience: int,
                  example_age: bool, cold_start: str, spec_path: Path | None,
                  seed: int) -> None:
    """Train, select the epoch on validation users, evaluate against most-popular on the
    test users, and export a versioned artifact."""
    from towers.report import training_summary, write_report
    from towers.train import TrainConfig, train

    if (out / "manifest.json").exists():
        raise Refused(f"{out} already holds an artifact", "pick a new --out directory")
    spec = _spec(spec_path) if spec_path else None
    dataset = _load_dataset(ctx, data, [r.collection for r in spec.relations] if spec else [])
    config = TrainConfig(epochs=epochs, dims=dims, batch_size=batch_size,
                         learning_rate=learning_rate, temperature=temperature,
                         max_examples_per_user=max_examples_per_user, patience=patience,
                         example_age=example_age, seed=seed,
                         cold_start="neighbours" if cold_start == "neighbours" else "content")
    measured = None
    if cold_start == "auto":
        from towers.holdout import choose_cold_start

        click.echo("cold start: measuring held-out new items (one more training)", err=True)
        measured = choose_cold_start(dataset, config, spec)
        click.echo(f"cold start: {measured.items} (HR@100 {measured.measured})", err=True)
    result = train(dataset, config, spec, on_epoch=print_epoch)
    summary = training_summary(result, config)
    artifact = result.export(out, name, version, summary, measured)
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
    from towers.artifact import ModelArtifact
    from towers.evaluate import evaluate_artifact

    artifact = ModelArtifact.load(artifact_dir)
    click.echo(json.dumps({"model_version": artifact.manifest.ref,
                           **evaluate_artifact(artifact, _load_dataset(ctx, data))}, indent=2))
