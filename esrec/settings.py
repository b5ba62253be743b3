"""One frozen settings model for every esrec process.

Values come from, highest priority first: environment variables (``ESREC_`` prefix,
``__`` between nesting levels, e.g. ``ESREC_ES__HOSTS``), then an optional TOML or YAML
file named by ``--config`` or ``ESREC_CONFIG``, then the defaults below, which point at
the local stack (``esrec stack up``) on its standard loopback ports.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "ESREC_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "ESREC_CONFIG"

# Standard ports of each server: what `esrec stack up` binds by default and what a
# developer expects a local Elasticsearch / MongoDB / Kafka to listen on.
DEFAULT_ES_URL = "http://127.0.0.1:9200"
DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017/"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"

# Elasticsearch index and alias names: lowercase, no leading -_+, none of \/*?"<>| ,#:
_ES_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

_config_file: ContextVar[Path | None] = ContextVar("esrec_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _split_csv(value: Any) -> Any:
    """Accept ``a,b`` from an env var as well as a list from a file."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ElasticsearchSettings(_Section):
    hosts: Annotated[list[str], NoDecode] = Field(default=[DEFAULT_ES_URL], min_length=1)
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout_s: float = Field(default=30.0, gt=0)

    _split_hosts = field_validator("hosts", mode="before")(_split_csv)

    @field_validator("hosts")
    @classmethod
    def _urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("http://", "https://")):
                raise ValueError(
                    f"{host!r} is not a URL; write it with its scheme, e.g. http://{host}"
                )
        return hosts

    @model_validator(mode="after")
    def _one_auth(self) -> ElasticsearchSettings:
        if self.api_key is not None and self.username is not None:
            raise ValueError("set either api_key or username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        return self


class CollectionNames(_Section):
    items: str = "items"
    users: str = "users"
    user_state: str = "user_state"
    interactions: str = "interactions"
    checkpoints: str = "esrec_checkpoints"
    dead_letters: str = "esrec_dead_letters"
    models: str = "esrec_models"  # registry documents; GridFS bucket of the same name


class MongoSettings(_Section):
    uri: SecretStr = SecretStr(DEFAULT_MONGO_URI)  # may embed credentials
    database: str = "esrec"
    collections: CollectionNames = CollectionNames()
    server_selection_timeout_ms: int = Field(default=10_000, gt=0)

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: SecretStr) -> SecretStr:
        if not uri.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return uri


class TopicNames(_Section):
    user_events: str = "esrec.user-events"
    item_changes: str = "esrec.item-changes"
    dead_letters: str = "esrec.dead-letters"


class KafkaSettings(_Section):
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default=[DEFAULT_KAFKA_BOOTSTRAP], min_length=1
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    client_id: str = "esrec"
    topics: TopicNames = TopicNames()

    _split_servers = field_validator("bootstrap_servers", mode="before")(_split_csv)

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, servers: list[str]) -> list[str]:
        for server in servers:
            if not _HOST_PORT.match(server):
                raise ValueError(f"{server!r} is not host:port, e.g. 127.0.0.1:9092")
        return servers

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self


class IndexSettings(_Section):
    prefix: str = "esrec"
    serving_alias: str = "esrec-items"

    @field_validator("prefix", "serving_alias")
    @classmethod
    def _es_name(cls, name: str) -> str:
        if not _ES_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid Elasticsearch name: use lowercase letters, "
                "digits, '.', '_' and '-', starting with a letter or digit"
            )
        return name


ProjectedType = Literal["keyword", "text", "float", "long", "date", "boolean"]


class IndexerSettings(_Section):
    """The change-stream indexer: batching, index layout, error handling."""

    # 500 docs / 8 MB / 50 ms: bulk requests of a few MB amortise the round trip while a
    # quiet stream still reaches ES within ~50 ms of the change.
    batch_max_docs: int = Field(default=500, gt=0)
    batch_max_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    batch_max_wait_ms: int = Field(default=50, ge=0)
    # source fields copied into the index document for the other recall channels
    projection: dict[str, ProjectedType] = {
        "title": "text", "category": "keyword", "tags": "keyword", "created_at": "date",
        "price": "float", "popularity": "float",
    }
    required_fields: list[str] = []  # a document without one goes to dead letters
    max_document_bytes: int = Field(default=1024 * 1024, gt=0)  # BSON size of the source doc
    # auto: measure int8_hnsw's recall@10 on a sample of real item vectors when a version's
    # index is created, and use it only if it reaches int8_min_recall
    index_options: Literal["auto", "hnsw", "int8_hnsw"] = "auto"
    int8_min_recall: float = Field(default=0.95, ge=0, le=1)
    error_budget_ratio: float = Field(default=0.05, gt=0, le=1)  # dead letters per event
    error_budget_window: int = Field(default=1000, gt=0)  # ... over this many recent events
    retry_max_delay_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # 0: no HTTP endpoint
    on_history_lost: Literal["fail", "resync"] = "fail"
    # delete tombstones older than this (and only when no backfill writes to the index):
    # long enough for any replay from a checkpoint to have happened
    tombstone_retention_hours: float = Field(default=72.0, gt=0)


class RolloutSettings(_Section):
    """Model-version rollouts: how the daemon follows the registry, and the promote gates."""

    follow_interval_s: float = Field(default=2.0, gt=0)  # daemon re-reads version states
    # a retired version's index is deleted after this: longer than follow_interval_s (the
    # daemon stops writing) plus the recall alias cache and the slowest in-flight query
    retire_grace_s: float = Field(default=60.0, ge=0)
    min_coverage: float = Field(default=0.999, gt=0, le=1)  # live items indexed / in MongoDB
    max_lag_s: float = Field(default=30.0, gt=0)  # checkpoint behind the catalog
    vector_sample: int = Field(default=50, gt=0)  # items re-embedded and compared
    vector_tolerance: float = Field(default=1e-4, gt=0)  # max abs difference per dimension
    ann_queries: int = Field(default=20, gt=0)
    ann_k: int = Field(default=10, gt=0)
    min_ann_overlap: float = Field(default=0.9, ge=0, le=1)  # kNN top-k vs exact top-k
    max_p99_ms: float = Field(default=250.0, gt=0)  # kNN latency probe on the new index


class ChannelSettings(_Section):
    enabled: bool = True
    weight: float = Field(default=1.0, ge=0)
    size: int = Field(default=100, gt=0, le=1000)  # candidates this channel asks for
    timeout_ms: int = Field(default=200, gt=0)  # Elasticsearch's per-search time budget


def _default_channels() -> dict[str, ChannelSettings]:
    # kNN leads; the content and popularity channels fill in, and carry cold-start users
    return {"knn": ChannelSettings(weight=1.0), "i2i": ChannelSettings(weight=0.8, size=50),
            "tags": ChannelSettings(weight=0.5, size=50), "hot": ChannelSettings(weight=0.3,
                                                                               size=50),
            "fresh": ChannelSettings(weight=0.2, size=30)}


class RecallSettings(_Section):
    """Recall for the feed service: user state, channels, fusion, the HTTP API."""

    consumer_group: str = "esrec-user-state"
    events_metrics_port: int = Field(default=9465, ge=0, le=65535)  # `recall events`; 0: none
    history_len: int = Field(default=50, gt=0)  # recent items kept per user
    seen_event_ids: int = Field(default=500, gt=0)  # per user, for idempotent event replays
    alias_ttl_s: float = Field(default=1.0, ge=0)  # how long a resolved serving alias is reused
    channels: dict[str, ChannelSettings] = Field(default_factory=_default_channels)
    fusion: Literal["rrf", "quota"] = "rrf"
    rrf_k: int = Field(default=60, gt=0)  # the constant of Cormack et al. 2009
    default_k: int = Field(default=100, gt=0)
    max_k: int = Field(default=500, gt=0)
    i2i_items: int = Field(default=3, gt=0)  # the user's newest items used as i2i seeds
    i2i_min_similarity: float = Field(default=0.3, ge=-1, le=1)
    hot_window_days: float = Field(default=30.0, gt=0)
    fresh_half_life_days: float = Field(default=14.0, gt=0)  # i2i re-weighting by age
    # the only fields a request may filter on (no query injection): field -> "term" | "range"
    filter_fields: dict[str, Literal["term", "range"]] = {
        "category": "term", "tags": "term", "price": "range", "created_at": "range"}
    api_token: SecretStr | None = None  # when set, POST /v1/recall needs "Bearer <token>"
    port: int = Field(default=8080, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything an esrec process needs to reach its servers and name its data."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
    )

    es: ElasticsearchSettings = ElasticsearchSettings()
    mongo: MongoSettings = MongoSettings()
    kafka: KafkaSettings = KafkaSettings()
    index: IndexSettings = IndexSettings()
    indexer: IndexerSettings = IndexerSettings()
    rollout: RolloutSettings = RolloutSettings()
    recall: RecallSettings = RecallSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


class SettingsError(Exception):
    """Settings that cannot be used, with one line per problem naming the field and the fix."""


def env_var_name(location: tuple[str | int, ...]) -> str:
    """The environment variable that sets a field, e.g. ('es', 'hosts') -> ESREC_ES__HOSTS."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in location)


def env_var_names() -> set[str]:
    """Every environment variable the settings model reads (leaf fields only)."""

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[str]:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, (*prefix, name))
            else:
                yield env_var_name((*prefix, name))

    return set(walk(Settings, ()))


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = tuple(p for p in problem["loc"] if isinstance(p, str))
        dotted = ".".join(location)
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling against `esrec config show`"
        lines.append(
            f"{dotted}: {message} (set {env_var_name(location)} or {dotted} in the config file)"
        )
    return "\n".join(lines)


def server_environment(settings: Settings) -> dict[str, str]:
    """``ESREC_*`` variables that aim an `esrec` subprocess at the same servers and names
    (credentials come from the caller's own environment)."""
    kafka = settings.kafka
    return {
        "ESREC_ES__HOSTS": ",".join(settings.es.hosts),
        "ESREC_MONGO__URI": settings.mongo.uri.get_secret_value(),
        "ESREC_MONGO__DATABASE": settings.mongo.database,
        "ESREC_KAFKA__BOOTSTRAP_SERVERS": ",".join(kafka.bootstrap_servers),
        "ESREC_KAFKA__TOPICS__USER_EVENTS": kafka.topics.user_events,
        "ESREC_KAFKA__TOPICS__DEAD_LETTERS": kafka.topics.dead_letters,
        "ESREC_INDEX__PREFIX": settings.index.prefix,
        "ESREC_INDEX__SERVING_ALIAS": settings.index.serving_alias,
        "ESREC_RECALL__CONSUMER_GROUP": settings.recall.consumer_group,
        "ESREC_RECALL__HOT_WINDOW_DAYS": str(settings.recall.hot_window_days),
        "ESREC_ROLLOUT__FOLLOW_INTERVAL_S": str(settings.rollout.follow_interval_s),
    }


def load_settings(config_file: Path | None = None) -> Settings:
    """Read settings from env and the config file, or raise SettingsError saying what to fix."""
    if config_file is None and os.environ.get(CONFIG_ENV_VAR):
        config_file = Path(os.environ[CONFIG_ENV_VAR])
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist")
        if config_file.suffix not in (".toml", ".yaml", ".yml"):
            raise SettingsError(
                f"config file {config_file} must end in .toml, .yaml or .yml"
            )
    token = _config_file.set(config_file)
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    except ValueError as error:  # a config file or env var that does not parse
        raise SettingsError(f"cannot read settings: {error}") from None
    finally:
        _config_file.reset(token)
