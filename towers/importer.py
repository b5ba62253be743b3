"""Importing a real interaction log and catalog, mapped by a small declared config.

    config (YAML/JSON) -> read rows (CSV / Parquet / JSONL) -> map + validate each row
        -> Dataset (items, users, interactions) + ImportReport (bad rows by reason)

A bad row is counted under its reason (and its first few row numbers kept), never fatal:
one broken line in a 100k-line log must not stop an import. Duplicate interactions
(same user, item, time and event) collapse into one, so re-running an import over the
same files gives the same dataset, and ``write_mongo(..., replace=False)`` upserts by id.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import Refused
from runtime.ids import id_text_problem
from towers.dataset import Dataset, Interaction, tag_problem, utc_seconds

EXAMPLE_ROWS = 5  # row numbers kept per bad-row reason
OnProgress = Callable[[str, int], None]  # (file stem, rows read so far)
PROGRESS_EVERY = 10_000


class ImportConfigError(Refused):
    """The import config or a file cannot be used at all (not a bad row)."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldMap(_Strict):
    """One output field from one input column, optionally split into a list, cut by a
    regex's first group, and typed."""

    column: str
    split: str | None = None  # "a|b|c" -> ["a", "b", "c"]
    take: Literal["all", "first"] = "all"  # with split: the list, or its first element
    pattern: str | None = None  # keep the regex's first group ("Toy Story (1995)" -> 1995)
    type: Literal["str", "float", "int", "date", "list"] = "str"
    lower: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if re.compile(value).groups < 1:
                    raise ValueError("the pattern needs a group: (...)")
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return value


class InteractionsMap(_Strict):
    path: str
    user: str
    item: str
    timestamp: str
    timestamp_unit: Literal["s", "ms", "iso"] = "s"
    event: str | None = None  # a column holding the event type; else event_type for all
    event_type: str = "click"
    weight: str | None = None  # a column holding a weight (a rating, a dwell time)
    min_weight: float | None = None  # rows below it are skipped (counted, not bad)


class ExtraTagsMap(_Strict):
    """Tags from a second file (user-applied tags): each item keeps its ``top`` most
    frequent ones, lowercased, after the tags of its own row."""

    path: str
    item: str
    tag: str
    top: int = Field(default=10, gt=0)


class ItemsMap(_Strict):
    path: str
    id: str
    fields: dict[str, FieldMap] = Field(default_factory=dict)
    extra_tags: ExtraTagsMap | None = None


class UsersMap(_Strict):
    path: str
    id: str
    fields: dict[str, FieldMap] = Field(default_factory=dict)


class ImportConfig(_Strict):
    interactions: InteractionsMap
    items: ItemsMap
    users: UsersMap | None = None

    @classmethod
    def load(cls, path: Path) -> ImportConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ImportConfigError(f"cannot read import config {path}: {error}",
                               "pass a YAML or JSON file (see bench/movielens.yaml)") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            lines = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                              for e in error.errors())
            raise ImportConfigError(f"import config {path}: {lines}",
                               "fix the named keys (see bench/movielens.yaml)") from None


@dataclass
class ImportReport:
    rows: Counter[str] = field(default_factory=Counter)  # rows read per file stem
    kept: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # by reason, not errors
    bad: Counter[str] = field(default_factory=Counter)  # "stem: reason" -> rows
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> row numbers

    def refuse(self, stem: str, row: int, reason: str) -> None:
        key = f"{stem}: {reason}"
        self.bad[key] += 1
        rows = self.examples.setdefault(key, [])
        if len(rows) < EXAMPLE_ROWS:
            rows.append(row)

    def worst_bad_ratio(self) -> tuple[str | None, float]:
        """The file with the largest share of bad rows, and that share."""
        bad: Counter[str] = Counter()
        for key, count in self.bad.items():
            bad[key.split(":", 1)[0]] += count
        ratios = {stem: bad[stem] / rows for stem, rows in self.rows.items() if rows}
        worst = max(ratios, key=lambda stem: ratios[stem], default=None)
        return worst, ratios.get(worst, 0.0) if worst else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "kept": dict(self.kept),
                "skipped": dict(self.skipped), "bad": dict(self.bad),
                "bad_examples": self.examples, "bad_total": sum(self.bad.values())}


class BadRow(ValueError):
    """A row that cannot be imported; the message is the reason (no row content)."""


# -- reading rows -----------------------------------------------------------------------

def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (with a header), Parquet or JSONL file, by its suffix. A JSONL line
    that is not an object yields {} so that its row number is reported as bad."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: pip install 'esrec[parquet]'

        for batch in pq.ParquetFile(path).iter_batches(batch_size=PROGRESS_EVERY):
            yield from batch.to_pylist()
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    yield row if isinstance(row, dict) else {}
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8", errors="replace") as text:
            yield from csv.DictReader(text, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise ImportConfigError(f"{path}: unknown file type {suffix!r}",
                           "use .csv, .tsv, .jsonl or .parquet")


def _rows(directory: Path, name: str, report: ImportReport,
          on_progress: OnProgress | None) -> Iterator[tuple[int, dict[str, Any]]]:
    path = directory / name
    if not path.is_file():
        raise ImportConfigError(f"{path} does not exist",
                                "check --data and the paths in the config")
    stem = path.stem
    for number, row in enumerate(read_rows(path), 1):
        report.rows[stem] += 1
        if on_progress is not None and number % PROGRESS_EVERY == 0:
            on_progress(stem, number)
        yield number, row


# -- mapping values ---------------------------------------------------------------------

def _identifier(value: Any, what: str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Parquet/JSON may hand a numeric id as 12.0
    if value is None or isinstance(value, bool | dict | list) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise BadRow(f"{what}: missing or not an id")
    text = str(value).strip()
    problem = id_text_problem(text)
    if problem is not None:
        raise BadRow(f"{what}: {problem}")
    return text


def _epoch(value: Any, unit: str) -> float:
    try:
        if unit == "iso":
            seconds = utc_seconds(datetime.fromisoformat(str(value).strip()))
        else:
            seconds = float(value) / (1000.0 if unit == "ms" else 1.0)
    except (TypeError, ValueError, OverflowError):
        raise BadRow(f"timestamp: not a {unit} timestamp") from None
    if not math.isfinite(seconds) or not 0 <= seconds < 32_503_680_000:  # year 3000
        raise BadRow("timestamp: out of range")
    return seconds


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"{what}: not a number") from None
    if not math.isfinite(number):
        raise BadRow(f"{what}: not a finite number")
    return number


def _field(spec: FieldMap, row: Mapping[str, Any], name: str) -> Any:
    """The mapped value, or None when the column is empty or the pattern does not match."""
    raw = row.get(spec.column)
    if raw is None or raw == "":
        return None
    if spec.split is not None and isinstance(raw, str):
        parts: Any = [p.strip() for p in raw.split(spec.split) if p.strip()]
        raw = (parts[0] if parts else None) if spec.take == "first" else parts
    if spec.pattern is not None and isinstance(raw, str):
        match = re.search(spec.pattern, raw)
        raw = match.group(1) if match else None
    if raw is None:
        return None
    if spec.type == "list":
        values = raw if isinstance(raw, list) else [raw]
        out = [str(v).lower() if spec.lower else str(v) for v in values]
        problems = [p for v in out if (p := tag_problem(v))]
        if problems:
            raise BadRow(f"{name}: {problems[0]}")
        return out
    if spec.type == "float":
        return _number(raw, name)
    if spec.type == "int":
        return int(_number(raw, name))
    if spec.type == "date":
        text = str(raw).strip()
        try:
            parsed = datetime(int(text), 1, 1, tzinfo=UTC) if text.isdigit() and len(
                text) == 4 else datetime.fromisoformat(text)
        except ValueError:
            raise BadRow(f"{name}: not a date (a year or ISO-8601)") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    text = str(raw)
    return text.lower() if spec.lower else text


def _document(id_column: str, fields: Mapping[str, FieldMap],
              row: Mapping[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"_id": _identifier(row.get(id_column), id_column)}
    for name, spec in fields.items():
        value = _field(spec, row, name)
        if value is not None:
            document[name] = value
    return document


# -- the import -------------------------------------------------------------------------

def import_dataset(config: ImportConfig, directory: Path,
                   on_progress: OnProgress | None = None) -> tuple[Dataset, ImportReport]:
    """Read and validate every file the config names (paths relative to ``directory``)."""
    report = ImportReport()
    items = _documents(directory, config.items.path, config.items.id, config.items.fields,
                       report, on_progress)
    if config.items.extra_tags is not None:
        _add_extra_tags(items, directory, config.items.extra_tags, report, on_progress)
    users = ({} if config.users is None else
             _documents(directory, config.users.path, config.users.id, config.users.fields,
                        report, on_progress))
    interactions = _interactions(directory, config.interactions, set(items), report,
                                 on_progress)
    for user_id in {i.user_id for i in interactions} - set(users):
        users[user_id] = {"_id": user_id}  # a user known only by behaviour
    return Dataset(items=list(items.values()), users=list(users.values()),
                   interactions=interactions), report


def _documents(directory: Path, path: str, id_column: str, fields: Mapping[str, FieldMap],
               report: ImportReport, on_progress: OnProgress | None
               ) -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    stem = Path(path).stem
    for number, row in _rows(directory, path, report, on_progress):
        try:
            document = _document(id_column, fields, row)
        except BadRow as error:
            report.refuse(stem, number, str(error))
            continue
        if document["_id"] in documents:
            report.skipped[f"{stem}: repeated id (last row wins)"] += 1
        documents[document["_id"]] = document
        report.kept[stem] = len(documents)
    return documents


def _add_extra_tags(items: dict[str, dict[str, Any]], directory: Path, spec: ExtraTagsMap,
                    report: ImportReport, on_progress: OnProgress | None) -> None:
    counts: dict[str, Counter[str]] = {}
    stem = Path(spec.path).stem
    for number, row in _rows(directory, spec.path, report, on_progress):
        try:
            item_id = _identifier(row.get(spec.item), spec.item)
            tag = str(row.get(spec.tag) or "").strip().lower()
            if problem := tag_problem(tag):
                raise BadRow(f"{spec.tag}: {problem}")
        except BadRow as error:
            report.refuse(stem, number, str(error))
            continue
        if item_id not in items:
            report.skipped[f"{stem}: item not in the catalog"] += 1
            continue
        counts.setdefault(item_id, Counter())[tag] += 1
        report.kept[stem] += 1
    for item_id, tags in counts.items():
        own = list(items[item_id].get("tags") or [])
        ranked = sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:spec.top]
        items[item_id]["tags"] = own + [t for t, _ in ranked if t not in own]


def _interactions(directory: Path, spec: InteractionsMap, catalog: set[str],
                  report: ImportReport, on_progress: OnProgress | None) -> list[Interaction]:
    stem = Path(spec.path).stem
    unique: dict[tuple[str, str, float, str], Interaction] = {}
    for number, row in _rows(directory, spec.path, report, on_progress):
        try:
            user = _identifier(row.get(spec.user), spec.user)
            item = _identifier(row.get(spec.item), spec.item)
            ts = _epoch(row.get(spec.timestamp), spec.timestamp_unit)
            event = (str(row.get(spec.event) or "").strip() if spec.event else spec.event_type)
            if not event:
                raise BadRow(f"{spec.event}: no event type")
            weight = _number(row.get(spec.weight), spec.weight) if spec.weight else 1.0
        except BadRow as error:
            report.refuse(stem, number, str(error))
            continue
        if item not in catalog:
            report.skipped[f"{stem}: item not in the catalog"] += 1
            continue
        if spec.min_weight is not None and weight < spec.min_weight:
            report.skipped[f"{stem}: weight below min_weight"] += 1
            continue
        key = (user, item, ts, event)
        if key in unique:
            report.skipped[f"{stem}: duplicate interaction"] += 1
        unique[key] = Interaction(user, item, ts, event, weight)
    report.kept[stem] = len(unique)
    return sorted(unique.values(), key=lambda i: (i.ts, i.user_id, i.item_id))
