"""User state in MongoDB: a bounded recent history per user, fed by events, idempotent.

    user_state: {_id: user_id, recent: [{item_id, type, ts}] newest first (<= history_len),
                 tag_counts: {tag: n}, seen: [event_id] (<= seen_event_ids), updated_at}

An event is applied at most once: the update only matches a state whose ``seen`` list does
not hold the event id, and the upsert that follows a non-match collides with the existing
document (duplicate key), which is how a replayed event is recognised and skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from esrec.settings import Settings
from towers.dataset import ITEM_TAGS_FIELD, RECENT_ITEMS, TAG_COUNTS

DUPLICATE_KEY = 11000
ItemId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]
EventType = Literal["view", "click", "like", "add_to_cart", "purchase", "share"]


def problems(error: ValidationError, whole: str = "request") -> str:
    """A validation error as one line: ``field.path: message; ...``."""
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


class UserStates:
    def __init__(self, db: Database, settings: Settings) -> None:
        names = settings.mongo.collections
        self.states = db[names.user_state]
        self.users = db[names.users]
        self.items = db[names.items]
        self.history_len = settings.recall.history_len
        self.seen_event_ids = settings.recall.seen_event_ids

    def apply(self, events: Sequence[UserEvent]) -> int:
        """Apply events; returns how many were new (replays are skipped)."""
        if not events:
            return 0
        tags = {str(item["_id"]): item.get(ITEM_TAGS_FIELD) or [] for item in self.items.find(
            {"_id": {"$in": list({event.item_id for event in events})}}, {ITEM_TAGS_FIELD: 1})}
        updates = [self._update(event, tags.get(event.item_id, [])) for event in events]
        try:
            result = self.states.bulk_write(updates, ordered=False)
        except BulkWriteError as error:
            others = [e for e in error.details["writeErrors"] if e["code"] != DUPLICATE_KEY]
            if others:
                raise
            details = error.details
            return details["nModified"] + details["nUpserted"]
        return result.modified_count + result.upserted_count

    def _update(self, event: UserEvent, tags: Sequence[Any]) -> UpdateOne:
        counts = {f"{TAG_COUNTS}.{tag}": 1 for tag in tags
                  if isinstance(tag, str) and tag and "." not in tag and not tag.startswith("$")}
        update: dict[str, Any] = {
            "$push": {
                "recent": {"$each": [{"item_id": event.item_id, "type": event.type,
                                      "ts": event.ts}],
                           "$sort": {"ts": -1}, "$slice": self.history_len},
                "seen": {"$each": [event.event_id], "$slice": -self.seen_event_ids},
            },
            "$max": {"updated_at": datetime.now(UTC)},
        }
        if counts:
            update["$inc"] = counts
        return UpdateOne({"_id": event.user_id, "seen": {"$ne": event.event_id}}, update,
                         upsert=True)

    def user_document(self, user_id: str, session_items: Sequence[str] = ()) -> dict[str, Any]:
        """Profile + behaviour in the shape the user tower reads, in one MongoDB read.

        ``session_items``: recent item ids the caller knows (newest first), ahead of the
        stored history. An unknown user yields ``{}``: a cold start.
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
        stored = [entry["item_id"] for entry in state.get("recent", [])]
        recent = list(dict.fromkeys([*session_items, *stored]))[:self.history_len]
        if not recent and not state.get(TAG_COUNTS) and not profile:
            return {}
        return {**profile, RECENT_ITEMS: recent, TAG_COUNTS: dict(state.get(TAG_COUNTS, {}))}
