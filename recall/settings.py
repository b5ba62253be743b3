"""Recall's settings section: user state, channels, fusion, the HTTP API.

``RecallConfig`` names the sections recall reads: its own, the index names and the
projected fields it may filter on (the indexer's), and the servers' names.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import Field, SecretStr

from indexer.settings import IndexConfig
from runtime.settings import Section

FilterKind = Literal["term", "range"]
DEFAULT_FILTERS: dict[str, FilterKind] = {
    "category": "term", "tags": "term", "price": "range", "created_at": "range"}


class ChannelSettings(Section):
    enabled: bool = True
    weight: float = Field(default=1.0, ge=0)
    size: int = Field(default=100, gt=0, le=1000)  # candidates this channel asks for
    timeout_ms: int = Field(default=200, gt=0)  # Elasticsearch's per-search time budget


def _default_channels() -> dict[str, ChannelSettings]:
    # kNN leads; each other channel weighs its own HR@100 relative to kNN's (MovieLens,
    # rounded to 0.05, at least 0.05: bench.quality's calibration), so the weak ones fill
    # in without pushing out kNN's better candidates; hot and fresh carry cold starts
    return {"knn": ChannelSettings(weight=1.0), "i2i": ChannelSettings(weight=0.5, size=50),
            "tags": ChannelSettings(weight=0.05, size=50),
            "hot": ChannelSettings(weight=0.1, size=50),
            "fresh": ChannelSettings(weight=0.05, size=30),
            "cluster": ChannelSettings(weight=0.05, size=50),
            "mlt": ChannelSettings(weight=0.2, size=50)}


class RecallSettings(Section):
    """Recall for the feed service: user state, channels, fusion, the HTTP API."""

    consumer_group: str = "esrec-user-state"  # the Kafka group of `esrec recall events`
    events_metrics_port: int = Field(default=9465, ge=0, le=65535)  # `recall events`; 0: none
    history_len: int = Field(default=50, gt=0)  # recent items kept per user
    seen_event_ids: int = Field(default=500, gt=0)  # per user, for idempotent event replays
    alias_ttl_s: float = Field(default=1.0, ge=0)  # how long a resolved serving alias is reused
    # JSON: channel -> enabled, weight, size, timeout_ms
    channels: dict[str, ChannelSettings] = Field(default_factory=_default_channels)
    # rrf: weighted reciprocal rank; quota: each channel a share by weight
    fusion: Literal["rrf", "quota"] = "rrf"
    rrf_k: int = Field(default=60, gt=0)  # the constant of Cormack et al. 2009
    default_k: int = Field(default=100, gt=0)  # candidates when a request names no k
    max_k: int = Field(default=500, gt=0)  # the most a request may ask for
    i2i_items: int = Field(default=3, gt=0)  # the user's newest items used as i2i seeds
    # how long a looked-up seed's vector is reused, per concrete index (recall.seeds; 0:
    # every request looks its seeds up with an mget)
    i2i_seed_ttl_s: float = Field(default=60.0, ge=0)
    i2i_seed_cache_items: int = Field(default=10000, ge=0)  # seed vectors kept at most
    # i2i keeps neighbours at least this similar
    i2i_min_similarity: float = Field(default=0.3, ge=-1, le=1)
    mlt_items: int = Field(default=5, gt=0, le=50)  # the user's newest items mlt starts from
    # text fields more-like-this compares
    mlt_fields: list[str] = Field(default_factory=lambda: ["title", "tags"], min_length=1)
    # seen items: the newest seen_in_query go into every search's must_not; any older ones
    # are filtered out of the results, each search asking for that many more (at most
    # max_overfetch), so no served candidate is an item the user has seen
    seen_in_query: int = Field(default=500, ge=0)
    max_overfetch: int = Field(default=1000, ge=0)
    # measured popularity (recall.popularity): events in the window before the newest
    # event, decayed with this half-life; the top popularity_top kept, re-read every ttl
    hot_window_days: float = Field(default=30.0, gt=0)
    popularity_half_life_days: float = Field(default=3.0, gt=0)  # the hot channel's decay
    popularity_top: int = Field(default=1000, gt=0)  # items the hot channel ranks
    popularity_ttl_s: float = Field(default=5.0, ge=0)  # how long a read of the counts is reused
    # `recall events` writes the counts folded in memory at most this often (fewer writes
    # for the same counts; a crash loses at most this long's counts)
    popularity_flush_s: float = Field(default=10.0, ge=0)
    # `recall events` re-reads an item's tags (copied into user state) at most this often
    item_tags_ttl_s: float = Field(default=60.0, ge=0)
    fresh_half_life_days: float = Field(default=14.0, gt=0)  # i2i re-weighting by age
    # during a canary roll: the share of candidate-arm requests also answered by the
    # baseline in the background, for the overlap figure (indexer.canary)
    canary_overlap_sample: float = Field(default=0.1, ge=0, le=1)
    # the only fields a request may filter on (no query injection): field -> "term" | "range"
    filter_fields: dict[str, FilterKind] = Field(default_factory=lambda: dict(DEFAULT_FILTERS))
    api_token: SecretStr | None = None  # when set, POST /v1/recall needs "Bearer <token>"
    port: int = Field(default=8080, ge=0, le=65535)  # `esrec recall serve`
    retry_max_delay_s: float = Field(default=30.0, gt=0)  # servers down: wait this at most
    shutdown_timeout_s: float = Field(default=30.0, gt=0)  # `recall events` drain limit


class RecallConfig(IndexConfig, Protocol):
    """The sections recall reads: the index layout's (it queries the indexer's indices
    and filters on its projected fields), and its own."""

    @property
    def recall(self) -> RecallSettings: ...
