"""Training data: items, users, interactions; and the time-ordered leave-last-out split.

A user document for the user tower is the profile plus recent behaviour in exactly the
shape the serving side keeps in MongoDB (``recent_items`` newest first, ``tag_counts``
over those items), built here by ``behaviour`` so training and serving cannot drift.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo.database import Database

RECENT_ITEMS = "recent_items"
TAG_COUNTS = "tag_counts"
ITEM_TAGS_FIELD = "tags"
MAX_TAG_CHARS = 256
_CONTROL = {chr(code) for code in range(32)} | {"\x7f"}


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


@dataclass
class Dataset:
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]
    interactions: list[Interaction]

    def item_tags(self) -> dict[str, list[str]]:
        return {str(item["_id"]): usable_tags(item) for item in self.items}


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


def leave_last_out(dataset: Dataset, history_len: int = 50,
                   max_examples_per_user: int = 50) -> Split:
    """Train on each user's past, evaluate on their last interaction.

    ``max_examples_per_user`` keeps the most recent examples of heavy users, so a few of
    them do not dominate the loss.
    """
    by_user: dict[str, list[Interaction]] = {}
    for interaction in dataset.interactions:
        by_user.setdefault(interaction.user_id, []).append(interaction)
    profiles = {str(u["_id"]): u for u in dataset.users}
    tags = dataset.item_tags()
    train: list[Example] = []
    cases: list[EvalCase] = []
    counts: Counter[str] = Counter()
    for user_id in sorted(by_user):
        history = sorted(by_user[user_id], key=lambda i: (i.ts, i.item_id))
        profile = profiles.get(user_id, {"_id": user_id})
        window: deque[str] = deque(maxlen=history_len)
        examples = []
        held_out = history[-1] if len(history) >= 2 else None  # one interaction: train on it
        for interaction in history if held_out is None else history[:-1]:
            examples.append(Example(_user_doc(profile, window, tags, history_len),
                                    interaction.item_id, interaction.ts))
            window.appendleft(interaction.item_id)
        train.extend(examples[-max_examples_per_user:])
        counts.update(e.item_id for e in examples[-max_examples_per_user:])
        if held_out is not None:
            cases.append(EvalCase(_user_doc(profile, window, tags, history_len),
                                  held_out.item_id, held_out.ts,
                                  seen={i.item_id for i in history[:-1]}))
    return Split(train=train, cases=cases, item_counts=counts,
                 train_end=max((e.ts for e in train), default=0.0))


def _user_doc(profile: dict[str, Any], window: Iterable[str],
              tags: Mapping[str, Sequence[str]], history_len: int) -> dict[str, Any]:
    return {**profile, **behaviour(list(window), tags, history_len)}


# -- reading and writing ---------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


def _interaction(row: Mapping[str, Any]) -> Interaction:
    return Interaction(str(row["user_id"]), str(row["item_id"]), _epoch(row["ts"]),
                       str(row.get("event", "click")))


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
                    raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".parquet"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise FileNotFoundError(f"{directory} has no {stem}.jsonl or {stem}.parquet")


def load_files(directory: Path) -> Dataset:
    """Read items, users and interactions from JSONL or Parquet files in ``directory``."""
    return Dataset(
        items=list(_read_rows(_find(directory, "items"))),
        users=list(_read_rows(_find(directory, "users"))),
        interactions=[_interaction(r) for r in _read_rows(_find(directory, "interactions"))],
    )


def write_jsonl(dataset: Dataset, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = {
        "items": dataset.items,
        "users": dataset.users,
        "interactions": [{"user_id": i.user_id, "item_id": i.item_id, "event": i.event,
                          "ts": datetime.fromtimestamp(i.ts, UTC).isoformat()}
                         for i in dataset.interactions],
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


def load_mongo(db: Database[dict[str, Any]], names: Collections) -> Dataset:
    return Dataset(
        items=list(db[names.items].find()),
        users=list(db[names.users].find()),
        interactions=[_interaction(r) for r in db[names.interactions].find({}, {"_id": 0})],
    )


def write_mongo(dataset: Dataset, db: Database[dict[str, Any]], names: Collections,
                batch: int = 5000) -> None:
    """Load a dataset into MongoDB (timestamps as BSON dates), replacing what was there."""
    def dated(document: dict[str, Any]) -> dict[str, Any]:
        return {k: datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str) else v
                for k, v in document.items()}

    interactions = [{"user_id": i.user_id, "item_id": i.item_id, "event": i.event,
                     "ts": datetime.fromtimestamp(i.ts, UTC)} for i in dataset.interactions]
    for name, documents in ((names.items, [dated(d) for d in dataset.items]),
                            (names.users, [dated(d) for d in dataset.users]),
                            (names.interactions, interactions)):
        db[name].drop()
        for start in range(0, len(documents), batch):
            db[name].insert_many(documents[start:start + batch], ordered=False)
    db[names.interactions].create_index([("user_id", 1), ("ts", 1)])
