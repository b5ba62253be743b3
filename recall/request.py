"""The recall request and response, built from the settings so that only configured
channels and filter fields are accepted (no query injection) and the OpenAPI schema says
exactly what is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model

from recall.channels import CHANNELS
from recall.fusion import Candidate
from recall.settings import RecallConfig
from recall.state import ItemId
from runtime.errors import InvalidSettings

MAX_RECENT = 100
MAX_TERMS = 100


class RecallSetupError(InvalidSettings):
    """The recall settings name a channel or filter field esrec does not know."""


MAX_WEIGHT = 100.0
Number = Annotated[float, Field(allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]


def _date(value: Any) -> datetime:
    """A date bound: an ISO-8601 string with a time zone, or a bare date (midnight UTC);
    never a number (1e9 would silently mean 2001)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 date string, e.g. 2026-01-31 or "
                         "2026-01-31T12:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 date, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
                         ) from None
    if parsed.tzinfo is None:
        if "T" in value or " " in value:
            raise ValueError("a date with a time needs a time zone, e.g. Z or +02:00")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


Date = Annotated[datetime, BeforeValidator(_date),
                 WithJsonSchema({"type": "string", "format": "date-time"})]


class NumberRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gte: Number | None = None
    gt: Number | None = None
    lte: Number | None = None
    lt: Number | None = None


class DateRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gte: Date | None = None
    gt: Date | None = None
    lte: Date | None = None
    lt: Date | None = None


def _terms(kind: Any) -> Any:
    return kind | Annotated[list[kind], Field(min_length=1, max_length=MAX_TERMS)]


_TERM_TYPES: dict[str, Any] = {
    "keyword": _terms(str), "text": _terms(str), "boolean": bool, "float": _terms(Number),
    "long": _terms(int), "date": Date}
_RANGE_TYPES: dict[str, Any] = {"float": NumberRange, "long": NumberRange, "date": DateRange}


def _filters_model(settings: RecallConfig) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, kind in settings.recall.filter_fields.items():
        es_type = settings.indexer.projection.get(name)
        allowed = (_TERM_TYPES if kind == "term" else _RANGE_TYPES).get(es_type or "")
        if allowed is None:
            raise RecallSetupError(
                f"recall.filter_fields.{name}: a {kind} filter needs a field in "
                f"indexer.projection of a fitting type (it is {es_type or 'not projected'})")
        fields[name] = (allowed | None, None)
    return create_model("Filters", __config__=ConfigDict(extra="forbid"), **fields)


def request_model(settings: RecallConfig) -> type[BaseModel]:
    recall = settings.recall
    unknown = set(recall.channels) - set(CHANNELS)
    if unknown:
        raise RecallSetupError(f"recall.channels: unknown channel(s) {sorted(unknown)}; "
                               f"known: {sorted(CHANNELS)}")
    for field in recall.mlt_fields:
        if settings.indexer.projection.get(field) not in ("text", "keyword"):
            raise RecallSetupError(f"recall.mlt_fields: {field} must be a text or keyword "
                                   "field in indexer.projection")
    names = tuple(name for name, channel in recall.channels.items() if channel.enabled)
    channel_name = Literal[names]  # type: ignore[valid-type]
    filters = _filters_model(settings)
    return create_model(
        "RecallRequest", __config__=ConfigDict(extra="forbid"),
        user_id=(ItemId, ...),
        k=(int, Field(default=recall.default_k, ge=1, le=recall.max_k)),
        channels=(dict[channel_name, Weight] | None, Field(
            default=None, description=f"channel -> weight (0..{MAX_WEIGHT:g}); default: "
                                      "every enabled channel with its configured weight")),
        filters=(filters, Field(default_factory=filters)),
        recent_items=(list[ItemId], Field(default_factory=list, max_length=MAX_RECENT,
                                          description="item ids of this session, newest "
                                                      "first (seen: excluded, and used as "
                                                      "history)")),
    )


def filter_clauses(filters: BaseModel) -> list[dict[str, Any]]:
    """Elasticsearch filter clauses for a validated Filters instance."""
    clauses: list[dict[str, Any]] = []
    for name, value in filters:
        if value is None:
            continue
        if isinstance(value, BaseModel):
            bounds = {op: bound.isoformat() if hasattr(bound, "isoformat") else bound
                      for op, bound in value.model_dump(exclude_none=True).items()}
            if bounds:
                clauses.append({"range": {name: bounds}})
        elif isinstance(value, list):
            clauses.append({"terms": {name: value}})
        else:
            clauses.append({"term": {name: value.isoformat() if hasattr(value, "isoformat")
                                     else value}})
    return clauses


class CanaryArm(BaseModel):
    """Which canary roll answered this user, and from which side."""

    id: str
    arm: Literal["baseline", "candidate"]


class RecallResponse(BaseModel):
    user_id: str
    request_id: str  # put it, with ``model``, on the user events of what the feed showed
    model: str  # the model version whose vectors answered (name@version)
    index: str  # the concrete index queried
    canary: CanaryArm | None  # during a canary roll: which one, and this user's arm
    cold_start: bool
    cluster: int | None  # the user's cluster under the answering version, if it has any
    degraded: bool
    reasons: dict[str, str]  # channel -> why it is missing or partial
    took_ms: float
    # where took_ms went: resolve, state (MongoDB), user_tower, cluster (assignment and
    # the cluster's popular items), seeds (i2i mget wait), queries, msearch
    # (Elasticsearch), rank (each channel's hits -> its ranked list), fusion
    stages_ms: dict[str, float]
    candidates: list[Candidate]
