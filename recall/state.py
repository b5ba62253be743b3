"""User state in MongoDB: a bounded recent history per user, fed by events, idempotent.

    user_state: {_id: user_id,
                 recent: [{item_id, type, ts, tags}] newest first (<= history_len),
                 seen_items: [item_id] every distinct item the user acted on, oldest first,
                 seen: [event_id] (<= seen_event_ids), updated_at}

The item's tags are copied into the history when the event is applied (the item as it
was then, read at most ``item_tags_ttl_s`` before), so reading a user costs one MongoDB
read; ``user_document`` turns the history into the user tower's input with
``towers.dataset.behaviour``, the function training uses too, over the same
``history_len`` newest items, in the same order (ties in time broken by item id), so
serving never sees features training did not.

``seen_items`` is what recall excludes: everything the user has seen, at any history
length, not only the ``history_len`` newest (``$addToSet`` is idempotent by itself). Its
bound is the user's distinct items: ~20 bytes each, read with the state on every request.

An event is applied at most once: a user's events of one batch go in one update that
only matches a state whose ``seen`` list holds none of their ids, and the upsert that
follows a non-match collides with the existing document (duplicate key). That is how a
replay is recognised: the user's events then go one by one, each applied only if its own
id is new, so a partly replayed batch applies exactly the events that are new.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from recall.settings import RecallConfig
from runtime.clients import MongoDatabase
from runtime.ids import Id
from towers.dataset import ITEM_TAGS_FIELD, behaviour, usable_tags

DUPLICATE_KEY = 11000
MAX_CACHED_ITEMS = 200_000  # item tags kept for item_tags_ttl_s (~100 bytes each)
ItemId = Id  # the one id rule of every stage (runtime.ids)
EventType = Literal["view", "click", "like", "add_to_cart", "purchase", "share"]


def problems(error: ValidationError, whole: str = "request") -> str:
    """A validation error as one line: ``field.path: message; ...`` (inputs not echoed)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}"
                     for e in error.errors())


class UserEvent(BaseModel):
    """One user interaction, as producers write it to the user-events topic (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: ItemId
    user_id: ItemId
    item_id: ItemId
    type: EventType
    ts: AwareDatetime
    # what the feed showed: the recall response's request_id and model (name@version),
    # when the item came from a recall answer; a canary roll counts them as clicks
    request_id: ItemId | None = None
    model: ItemId | None = None


@dataclass
class Applied:
    """What a batch of events did: new ones applied, replays skipped, refusals."""

    applied: int = 0
    duplicates: int = 0
    refused: list[tuple[UserEvent, str]] = field(default_factory=list)  # (event, why)
    new: list[UserEvent] = field(default_factory=list)  # the events applied just now


@dataclass(frozen=True)
class UserView:
    """A user as recall reads it: the user tower's input and everything to exclude."""

    document: dict[str, Any]  # profile + behaviour; {} for a cold start
    seen: list[str]  # session items, then stored items newest first; no repeats


class UserStates:
    def __init__(self, db: MongoDatabase, settings: RecallConfig) -> None:
        names = settings.mongo.collections
        self.states = db[names.user_state]
        self.users = db[names.users]
        self.items = db[names.items]
        self.history_len = settings.recall.history_len
        self.seen_event_ids = settings.recall.seen_event_ids
        self.tags_ttl_s = settings.recall.item_tags_ttl_s
        self._tags: dict[str, tuple[list[str], float]] = {}  # item -> (tags, read at)

    def apply(self, events: Sequence[UserEvent]) -> Applied:
        """Apply events: each new one once, replays skipped; an update MongoDB refuses for
        good is returned with the reason instead of stopping the batch.

        One update per user and batch (a batch of a busy partition holds many events of
        few users): it matches only a state that holds none of the events' ids. If some
        were applied before (a replay after a crash), the upsert that follows the
        non-match collides with the existing document, and that user's events go again
        one by one, each idempotent by its own id."""
        if not events:
            return Applied()
        first: dict[str, UserEvent] = {}
        for event in events:
            first.setdefault(event.event_id, event)  # the same event twice in one batch
        unique = list(first.values())
        result = Applied(duplicates=len(events) - len(unique))
        tags = self.item_tags({event.item_id for event in unique})
        by_user: dict[str, list[UserEvent]] = {}
        for event in unique:
            by_user.setdefault(event.user_id, []).append(event)
        groups = list(by_user.values())
        collided = self._write(
            [self.update(group, tags) for group in groups], groups, result)
        one_by_one = [[event] for group in collided for event in group]
        for _ in self._write([self.update(single, tags) for single in one_by_one],
                             one_by_one, result):
            result.duplicates += 1  # this very event was applied before
        result.applied = len(result.new)
        return result

    def item_tags(self, item_ids: set[str]) -> dict[str, list[str]]:
        """The items' usable tags, each read at most once per ``item_tags_ttl_s`` (an
        item's tags change rarely, its events come often: a hot item costs no read per
        batch); an item not in the catalog has none."""
        now = time.monotonic()
        if len(self._tags) > MAX_CACHED_ITEMS:
            self._tags.clear()
        missing = [item for item in item_ids
                   if now - self._tags.get(item, ([], -math.inf))[1] > self.tags_ttl_s]
        if missing:
            found = {str(item["_id"]): usable_tags(item) for item in self.items.find(
                {"_id": {"$in": missing}}, {ITEM_TAGS_FIELD: 1})}
            for item in missing:
                self._tags[item] = (found.get(item, []), now)
        return {item: self._tags[item][0] for item in item_ids}

    def _write(self, updates: list[UpdateOne], groups: list[list[UserEvent]],
               result: Applied) -> list[list[UserEvent]]:
        """Write one update per group; the groups applied go to ``result.new``, the ones
        MongoDB refused to ``result.refused``; returns the groups whose update collided
        with a state that holds one of their event ids already."""
        if not updates:
            return []
        failed: dict[int, dict[str, Any]] = {}
        try:
            self.states.bulk_write(updates, ordered=False)
        except BulkWriteError as error:
            failed = {e["index"]: e for e in error.details["writeErrors"]}
        collided = []
        for index, group in enumerate(groups):
            problem = failed.get(index)
            if problem is None:
                result.new.extend(group)
            elif problem["code"] == DUPLICATE_KEY:
                collided.append(group)
            else:
                result.refused.extend((event, f"MongoDB refused the update: "
                                              f"{problem['errmsg']}") for event in group)
        return collided

    def update(self, events: Sequence[UserEvent],
                tags: Mapping[str, Sequence[str]]) -> UpdateOne:
        """One user's events in one update, applied only if none of them was before."""
        entries = [{"item_id": event.item_id, "type": event.type, "ts": event.ts,
                    "tags": list(tags.get(event.item_id, ()))} for event in events]
        ids = [event.event_id for event in events]
        update: dict[str, Any] = {
            "$push": {
                # newest first; equal times: the larger item id counts as newer, as in
                # training's (ts, item_id) order
                "recent": {"$each": entries, "$sort": {"ts": -1, "item_id": -1},
                           "$slice": self.history_len},
                "seen": {"$each": ids, "$slice": -self.seen_event_ids},
            },
            "$addToSet": {"seen_items": {"$each": list(dict.fromkeys(
                event.item_id for event in events))}},
            "$max": {"updated_at": datetime.now(UTC)},
        }
        guard = {"$ne": ids[0]} if len(ids) == 1 else {"$nin": ids}
        return UpdateOne({"_id": events[0].user_id, "seen": guard}, update, upsert=True)

    def read(self, user_id: str, session_items: Sequence[str] = ()) -> UserView:
        """Profile + behaviour in the shape the user tower reads, and the items to exclude,
        in one MongoDB read.

        ``session_items``: recent item ids the caller knows (newest first), ahead of the
        stored history. An unknown user yields an empty document: a cold start.
        """
        found = list(self.users.aggregate([
            {"$match": {"_id": user_id}},
            {"$lookup": {"from": self.states.name, "localField": "_id", "foreignField": "_id",
                         "as": "state"}}]))
        if found:
            profile = found[0]
            state = (profile.pop("state") or [{}])[0]
        else:  # no profile: events alone (still one read on the common path above)
            profile, state = {}, self.states.find_one({"_id": user_id}) or {}
        document, seen = self._view(profile, state, session_items)
        return UserView(document, seen)

    def _view(self, profile: dict[str, Any], state: Mapping[str, Any],
              session_items: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
        """The user tower's document ({} for a cold start) and the seen items, newest first."""
        history = state.get("recent", [])
        recent = [*session_items, *(entry["item_id"] for entry in history)]
        seen = list(dict.fromkeys([*recent, *reversed(state.get("seen_items", []))]))
        if not recent and not profile:
            return {}, seen
        tags = {entry["item_id"]: entry.get("tags") or [] for entry in history}
        return {**profile, **behaviour(recent, tags, self.history_len)}, seen

    def documents(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The user tower's documents of many users, as ``read`` builds them, in two reads
        (states, profiles); an unknown user is a cold start ({})."""
        states = {state["_id"]: state for state in self.states.find(
            {"_id": {"$in": list(user_ids)}}, {"recent": 1})}
        profiles = {profile["_id"]: profile for profile in self.users.find(
            {"_id": {"$in": list(user_ids)}})}
        return {user: self._view(profiles.get(user, {}), states.get(user, {}))[0]
                for user in user_ids}

    def active_since(self, since: datetime | None,
                     batch: int = 1000) -> Iterator[dict[str, dict[str, Any]]]:
        """In batches, the documents of every user whose state changed at or after
        ``since`` (every user with a state: None)."""
        self.states.create_index("updated_at")
        query = {} if since is None else {"updated_at": {"$gte": since}}
        ids: list[str] = []
        for state in self.states.find(query, {"_id": 1}):
            ids.append(state["_id"])
            if len(ids) == batch:
                yield self.documents(ids)
                ids = []
        if ids:
            yield self.documents(ids)

    def recent_events(self, batch: int = 1000) -> Iterator[dict[str, list[tuple[str, float]]]]:
        """In batches, every user's stored recent events as (item id, epoch seconds)."""
        found: dict[str, list[tuple[str, float]]] = {}
        for state in self.states.find({}, {"recent.item_id": 1, "recent.ts": 1}):
            found[state["_id"]] = [(entry["item_id"], _epoch(entry["ts"]))
                                   for entry in state.get("recent", [])]
            if len(found) == batch:
                yield found
                found = {}
        if found:
            yield found


def _epoch(value: datetime) -> float:
    """A BSON date as epoch seconds (a naive one is UTC, as MongoDB stores it)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
