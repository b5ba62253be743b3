"""The recall request and response, built from the settings so that only configured
channels and filter fields are accepted (no query injection) and the OpenAPI schema says
exactly what is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from esrec.settings import Settings
from recall.channels import CHANNELS
from recall.fusion import Candidate
from recall.state import ItemId

MAX_RECENT = 100
MAX_TERMS = 100


class RecallSetupError(ValueError):
    """The recall settings name a channel or filter field esrec does not know."""


class NumberRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


class DateRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gte: AwareDatetime | None = None
    gt: AwareDatetime | None = None
    lte: AwareDatetime | None = None
    lt: AwareDatetime | None = None


def _terms(kind: type) -> Any:
    return kind | Annotated[list[kind], Field(min_length=1, max_length=MAX_TERMS)]


_TERM_TYPES: dict[str, Any] = {
    "keyword": _terms(str), "text": _terms(str), "boolean": bool, "float": _terms(float),
    "long": _terms(int), "date": AwareDatetime}
_RANGE_TYPES: dict[str, Any] = {"float": NumberRange, "long": NumberRange, "date": DateRange}


def _filters_model(settings: Settings) -> type[BaseModel]:
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


def request_model(settings: Settings) -> type[BaseModel]:
    recall = settings.recall
    unknown = set(recall.channels) - set(CHANNELS)
    if unknown:
        raise RecallSetupError(f"recall.channels: unknown channel(s) {sorted(unknown)}; "
                               f"known: {sorted(CHANNELS)}")
    names = tuple(name for name, channel in recall.channels.items() if channel.enabled)
    channel_name = Literal[names]  # type: ignore[valid-type]
    filters = _filters_model(settings)
    return create_model(
        "RecallRequest", __config__=ConfigDict(extra="forbid"),
        user_id=(ItemId, ...),
        k=(int, Field(default=recall.default_k, ge=1, le=recall.max_k)),
        channels=(dict[channel_name, float] | None, Field(  # type: ignore[valid-type]
            default=None, description="channel -> weight (0..100); default: every enabled "
                                      "channel with its configured weight")),
        filters=(filters, Field(default_factory=filters)),
        recent_items=(list[ItemId], Field(default_factory=list, max_length=MAX_RECENT,
                                          description="item ids of this session, newest "
                                                      "first (seen: excluded, and used as "
                                                      "history)")),
    )


def filter_clauses(filters: BaseModel) -> list[dict[str, Any]]:
    """Elasticsearch filter clauses for a validated Filters instance."""
    clauses = []
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


class RecallResponse(BaseModel):
    user_id: str
    model: str  # the model version whose vectors answered (name@version)
    index: str  # the concrete index queried
    cold_start: bool
    degraded: bool
    reasons: dict[str, str]  # channel -> why it is missing or partial
    took_ms: float
    # where took_ms went: resolve, state (MongoDB), user_tower, seeds (i2i mget wait),
    # queries, msearch (Elasticsearch), fusion
    stages_ms: dict[str, float]
    candidates: list[Candidate]
