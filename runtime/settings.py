"""The settings sections every esrec process shares: how to reach each server and where
its own HTTP endpoints listen. Each package defines its own sections beside these
(``indexer.settings``, ``recall.settings``); the shell's settings model composes them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

# Standard ports of each server: what `esrec stack up` binds by default and what a
# developer expects a local Elasticsearch / MongoDB / Kafka to listen on.
DEFAULT_ES_URL = "http://127.0.0.1:9200"
DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017/"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
# /healthz, /metrics and the recall API listen on loopback unless told otherwise: a
# container (deploy/) sets ESREC_HTTP__HOST=0.0.0.0 to be reachable from outside
DEFAULT_LISTEN_HOST = "127.0.0.1"

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MASK = "**********"


class Section(BaseModel):
    """A settings section: frozen, and a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def split_csv(value: Any) -> Any:
    """Accept ``a,b`` from an env var as well as a list from a file."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?([^:@/]*):[^@/]*@")


def mask_url(url: str) -> str:
    """``scheme://user:pw@host/..`` -> ``scheme://user:****@host/..`` (with or without a
    scheme): the host stays readable, the password never reaches a log or `config show`."""
    return _USERINFO.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}:{MASK}@", url, count=1)


class ElasticsearchSettings(Section):
    # comma-separated URLs with their scheme; a password in one is masked in output
    hosts: Annotated[list[str], NoDecode] = Field(default=[DEFAULT_ES_URL], min_length=1)
    api_key: SecretStr | None = None  # either this or username + password
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None  # a CA bundle for https hosts
    verify_certs: bool = True
    request_timeout_s: float = Field(default=30.0, gt=0)  # per request

    _split_hosts = field_validator("hosts", mode="before")(split_csv)

    @field_validator("hosts")
    @classmethod
    def _urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.startswith(("http://", "https://")):
                raise ValueError(
                    f"{mask_url(host)!r} is not a URL; write it with its scheme, e.g. "
                    f"http://{mask_url(host)}")
        return hosts

    @field_serializer("hosts")
    def _masked(self, hosts: list[str]) -> list[str]:
        return [mask_url(host) for host in hosts]

    @model_validator(mode="after")
    def _one_auth(self) -> ElasticsearchSettings:
        if self.api_key is not None and self.username is not None:
            raise ValueError("set either api_key or username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        return self


class CollectionNames(Section):
    items: str = "items"  # the catalog the indexer follows
    users: str = "users"  # user profiles (recall, training)
    user_state: str = "user_state"  # recent items per user, from events
    item_popularity: str = "item_popularity"  # decayed event counts (recall.popularity)
    cluster_popularity: str = "cluster_popularity"  # ... per user cluster and model version
    interactions: str = "interactions"  # the training log (towers)
    # stream positions, backfill states, the relay's lease, each catalog's id kind
    checkpoints: str = "esrec_checkpoints"
    dead_letters: str = "esrec_dead_letters"  # catalog documents the indexer parked
    models: str = "esrec_models"  # registry documents; GridFS bucket of the same name
    canary: str = "esrec_canary"  # the running (or last) canary roll
    canary_observations: str = "esrec_canary_observations"  # what each arm saw
    redriven_event_letters: str = "esrec_redriven_event_letters"  # user-event dead letters


class MongoSettings(Section):
    uri: SecretStr = SecretStr(DEFAULT_MONGO_URI)  # may embed credentials
    database: str = "esrec"
    collections: CollectionNames = CollectionNames()
    server_selection_timeout_ms: int = Field(default=10_000, gt=0)  # then: unavailable

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: SecretStr) -> SecretStr:
        if not uri.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return uri

    @field_serializer("uri")
    def _masked(self, uri: SecretStr) -> str:
        return mask_url(uri.get_secret_value())


class TopicNames(Section):
    user_events: str = "esrec.user-events"  # what the feed service produces
    item_changes: str = "esrec.item-changes"  # the relay's changes, for indexer workers
    item_backfill: str = "esrec.item-backfill"  # a distributed build's chunks
    dead_letters: str = "esrec.dead-letters"  # user events `recall events` parked

    @field_validator("*")
    @classmethod
    def _topic(cls, name: str) -> str:
        if not _TOPIC.match(name):
            raise ValueError(f"{name[:60]!r} is not a Kafka topic name: 1 to 249 ASCII "
                             "letters, digits, '.', '_' and '-'")
        return name


class KafkaSettings(Section):
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(  # comma-separated host:port
        default=[DEFAULT_KAFKA_BOOTSTRAP], min_length=1
    )
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (SASL needs the three below)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # a CA bundle for SSL listeners
    client_id: str = "esrec"
    topics: TopicNames = TopicNames()

    _split_servers = field_validator("bootstrap_servers", mode="before")(split_csv)

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


class HttpSettings(Section):
    """Where every esrec process's HTTP endpoints listen (recall API, /healthz, /metrics)."""

    host: str = DEFAULT_LISTEN_HOST  # deploy/ sets 0.0.0.0
