"""Training data: items, users, interactions; and the time-ordered leave-last-out split.

A user document for the user tower is the profile plus recent behaviour in exactly the
shape the serving side keeps in MongoDB (``recent_items`` newest first, ``tag_counts``
over those items), built here by ``behaviour`` so training and serving cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import ReplaceOne
from pymongo.database import Database

from runtime.errors import Refused
from towers.relations import Relation, enrich

RECENT_ITEMS = "recent_items"
TAG_COUNTS = "tag_counts"
ITEM_TAGS_FIELD = "tags"
MAX_TAG_CHARS = 256
_CONTROL = {chr(code) for code in range(32)} | {"\x7f"}


class DatasetError(Refused):
    """Dataset files that cannot be read, or a dataset that cannot be made or trained on."""


def usable_tags(item: Mapping[str, Any]) -> list[str]:
    """An item's tags as every stage counts them (training, user state, the indexer's
    checks): the strings of its ``tags`` list that are non-empty, at most MAX_TAG_CHARS
    long and free of control characters (NUL included). Anything else is no tag."""
    raw = item.get(ITEM_TAGS_FIELD)
    if not isinstance(raw, list):
        return []
    return [tag for tag in raw if isinstance(tag, str) and tag_problem(tag) is None]


def tag_problem(tag: str) -> str | None:
    """Why a string is not a usable tag, or None."""
    if not tag or len(tag) > MAX_TAG_CHARS:
        return f"a tag must have 1 to {MAX_TAG_CHARS} characters"
    if not _CONTROL.isdisjoint(tag):
        return "a tag must not contain control characters (NUL, newline, ...)"
    return None


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    ts: float  # epoch seconds
    event: str = "click"
    weight: float = 1.0  # a rating or a dwell time, where the log has one

    @property
    def key(self) -> str:
        """A stable id: the same interaction imported twice is one document."""
        digest = hashlib.sha1(f"{self.user_id}\x00{self.item_id}\x00{self.ts!r}\x00"
                              f"{self.event}".encode(), usedforsecurity=False)
        return digest.hexdigest()[:24]


@dataclass
class Dataset:
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]
    interactions: list[Interaction]
    # collection -> documents: what the feature spec's relations join items with
    related: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def item_tags(self) -> dict[str, list[str]]:
        return {str(item["_id"]): usable_tags(item) for item in self.items}

    def items_for(self, relations: Sequence[Relation]) -> list[dict[str, Any]]:
        """The items as the towers see them: joined with their related documents."""
        return enrich(self.items, relations, self.related) if relations else self.items


def behaviour(recent_items: Sequence[str], item_tags: Mapping[str, Sequence[str]],
              history_len: int) -> dict[str, Any]:
    """The behaviour fields of a user document from recent item ids (newest first): the
    newest ``history_len`` of them and the tag counts over exactly those. Training and
    serving (recall.state) both build it here, so the user tower sees one definition."""
    window = list(recent_items[:history_len])
    counts: Counter[str] = Counter()
    for item_id in window:
        counts.update(item_tags.get(item_id, ()))
    return {RECENT_ITEMS: window, TAG_COUNTS: dict(counts)}


@dataclass
class Example:
    user: dict[str, Any]  # profile + behaviour before the interaction
    item_id: str
    ts: float


@dataclass
class EvalCase:
    user: dict[str, Any]
    target: str
    ts: float
    seen: set[str] = field(default_factory=set)


@dataclass
class Split:
    train: list[Example]
    cases: list[EvalCase]  # each user's last interaction, with everything before it as history
    item_counts: Counter[str]  # interactions per item in the training part
    train_end: float  # time of the newest training example: "now" for training features
    # each user's second-to-last interaction (users with >= 3): what training selects its
    # epoch on, so the test cases never decide anything
    validation: list[EvalCase] = field(default_factory=list)
    history: dict[str, list[str]] = field(default_factory=dict)  # user -> training items


def time_order(interactions: Iterable[Interaction]) -> list[Interaction]:
    """One user's interactions oldest first; equal times ordered by item id (as a string),
    the order user state keeps too (recall.state sorts by ts, then item_id)."""
    return sorted(interactions, key=lambda i: (i.ts, i.item_id))


def leave_last_out(dataset: Dataset, history_len: int = 50, max_examples_per_user: int = 0,
                   validation: bool = True) -> Split:
    """Train on each user's past, validate on their second-to-last interaction, test on
    their last.

    ``max_examples_per_user`` (> 0) keeps only the most recent examples of heavy users, so
    a few of them do not dominate the loss; 0 keeps every example.
    """
    by_user: dict[str, list[Interaction]] = {}
    for interaction in dataset.interactions:
        by_user.setdefault(interaction.user_id, []).append(interaction)
    profiles = {str(u["_id"]): u for u in dataset.users}
    tags = dataset.item_tags()
    split = Split(train=[], cases=[], item_counts=Counter(), train_end=0.0)
    for user_id in sorted(by_user):
        history = time_order(by_user[user_id])
        profile = profiles.get(user_id, {"_id": user_id})
        held = 1 if len(history) >= 2 else 0  # one interaction: train on it
        validated = 1 if validation and len(history) >= 3 else 0
        window: deque[str] = deque(maxlen=history_len)
        examples = []
        for position, interaction in enumerate(history):
            user = _user_doc(profile, window, tags, history_len)
            held_out = (split.cases if position == len(history) - held else
                        split.validation if validated and position == len(history) - held - 1
                        else None)
            if held_out is None:
                examples.append(Example(user, interaction.item_id, interaction.ts))
            else:
                held_out.append(EvalCase(user, interaction.item_id, interaction.ts,
                                         {i.item_id for i in history[:position]}))
            window.appendleft(interaction.item_id)
        split.history[user_id] = [e.item_id for e in examples]
        kept = examples[-max_examples_per_user:] if max_examples_per_user > 0 else examples
        split.train.extend(kept)
        split.item_counts.update(e.item_id for e in kept)
    split.train_end = max((e.ts for e in split.train), default=0.0)
    return split


def _user_doc(profile: dict[str, Any], window: Iterable[str],
              tags: Mapping[str, Sequence[str]], history_len: int) -> dict[str, Any]:
    return {**profile, **behaviour(list(window), tags, history_len)}


# -- reading and writing ---------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def utc_seconds(value: datetime) -> float:
    """A date's seconds since the epoch; one without a zone is UTC (BSON dates are, esrec
    decodes them naive: indexer.changes.document_codec; Elasticsearch reads such a text
    as UTC too), never the machine's local time."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc_seconds(value) if isinstance(value, datetime) else float(value)


def _interaction(row: Mapping[str, Any]) -> Interaction:
    return Interaction(str(row["user_id"]), str(row["item_id"]), _epoch(row["ts"]),
                       str(row.get("event", "click")), float(row.get("weight", 1.0)))


def _read_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: pip install 'esrec[parquet]'

        yield from pq.read_table(path).to_pylist()
        return
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{path}:{number}: not JSON ({error.msg})",
                                       "fix that line, or write the files again") from None


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".parquet"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise DatasetError(f"{directory} has no {stem}.jsonl or {stem}.parquet",
                       f"create a dataset with `esrec towers synth --out {directory}`")


def load_files(directory: Path, related: Sequence[str] = ()) -> Dataset:
    """Read items, users and interactions (and the ``related`` collections, one file
    each: ``<name>.jsonl``) from JSONL or Parquet files in ``directory``."""
    return Dataset(
        items=list(_read_rows(_find(directory, "items"))),
        users=list(_read_rows(_find(directory, "users"))),
        interactions=[_interaction(r) for r in _read_rows(_find(directory, "interactions"))],
        related={name: list(_read_rows(_find(directory, name))) for name in related},
    )


def write_jsonl(dataset: Dataset, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = {
        "items": dataset.items,
        "users": dataset.users,
        "interactions": [{"user_id": i.user_id, "item_id": i.item_id, "event": i.event,
                          "weight": i.weight, "ts": datetime.fromtimestamp(i.ts, UTC).isoformat()}
                         for i in dataset.interactions],
        **dataset.related,
    }
    for stem, documents in rows.items():
        with (directory / f"{stem}.jsonl").open("w") as out:
            for document in documents:
                out.write(json.dumps({k: _jsonable(v) for k, v in document.items()}) + "\n")


@dataclass(frozen=True)
class Collections:
    """Where a dataset lives in MongoDB (the esrec settings name them)."""

    items: str = "items"
    users: str = "users"
    interactions: str = "interactions"


def load_mongo(db: Database[dict[str, Any]], names: Collections,
               related: Sequence[str] = ()) -> Dataset:
    """The dataset in MongoDB, with the ``related`` collections a spec's relations name."""
    return Dataset(
        items=list(db[names.items].find()),
        users=list(db[names.users].find()),
        interactions=[_interaction(r) for r in db[names.interactions].find({}, {"_id": 0})],
        related={name: list(db[name].find()) for name in related},
    )


def write_mongo(dataset: Dataset, db: Database[dict[str, Any]], names: Collections,
                batch: int = 5000, replace: bool = True,
                on_progress: Callable[[str, int], None] | None = None) -> None:
    """Load a dataset into MongoDB (timestamps as BSON dates). ``replace`` drops what was
    there first; otherwise every document is upserted by its id (an interaction's id is
    its ``key``), so loading the same data twice leaves the same collections."""
    def dated(document: dict[str, Any]) -> dict[str, Any]:
        return {k: datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str) else v
                for k, v in document.items()}

    interactions = [{"_id": i.key, "user_id": i.user_id, "item_id": i.item_id,
                     "event": i.event, "weight": i.weight,
                     "ts": datetime.fromtimestamp(i.ts, UTC)} for i in dataset.interactions]
    for name, documents in ((names.items, [dated(d) for d in dataset.items]),
                            (names.users, [dated(d) for d in dataset.users]),
                            (names.interactions, interactions),
                            *((name, list(docs)) for name, docs in dataset.related.items())):
        if replace:
            db[name].drop()
        for start in range(0, len(documents), batch):
            part = documents[start:start + batch]
            if replace:
                db[name].insert_many(part, ordered=False)
            else:
                db[name].bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True)
                                     for d in part], ordered=False)
            if on_progress is not None:
                on_progress(name, start + len(part))
    db[names.interactions].create_index([("user_id", 1), ("ts", 1)])
