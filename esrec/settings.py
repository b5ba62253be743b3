"""The shell's settings model: every package's sections composed into one, frozen.

Values come from, highest priority first: environment variables (``ESREC_`` prefix,
``__`` between nesting levels, e.g. ``ESREC_ES__HOSTS``), then an optional TOML or YAML
file named by ``--config`` or ``ESREC_CONFIG``, then the defaults, which point at the
local stack (``esrec stack up``) on its standard loopback ports. Each section is defined
by the package that reads it: servers and HTTP in ``runtime``, the index, pipeline and
rollouts in ``indexer``, recall in ``recall``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from indexer.settings import IndexerSettings, IndexSettings, RolloutSettings
from recall.settings import RecallSettings
from runtime.errors import InvalidSettings
from runtime.settings import ElasticsearchSettings, HttpSettings, KafkaSettings, MongoSettings

ENV_PREFIX = "ESREC_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "ESREC_CONFIG"

_config_file: ContextVar[Path | None] = ContextVar("esrec_config_file", default=None)


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
    http: HttpSettings = HttpSettings()
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


class SettingsError(InvalidSettings):
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


_FIELD = re.compile(r'error parsing value for field "([^"]+)"')


def _unparsable_variable(error: ValueError | yaml.YAMLError) -> str | None:
    """pydantic-settings says only which section failed to parse; name the variable and
    its JSON error (a JSON value such as ESREC_RECALL__CHANNELS that is not JSON)."""
    match = _FIELD.search(str(error))
    if match is None:
        return None
    prefix = env_var_name((match.group(1),))
    for name in sorted(os.environ):
        if name == prefix or name.startswith(prefix + ENV_NESTED_DELIMITER):
            value = os.environ[name]
            if value.lstrip()[:1] not in ("{", "["):
                continue
            try:
                json.loads(value)
            except json.JSONDecodeError as problem:
                return (f"{name}: not valid JSON ({problem.msg} at line {problem.lineno} "
                        f"column {problem.colno}); write it as a JSON object, e.g. "
                        f"{name}='{{\"knn\": {{\"weight\": 1.0}}}}'")
    return None


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
        "ESREC_KAFKA__TOPICS__ITEM_CHANGES": kafka.topics.item_changes,
        "ESREC_KAFKA__TOPICS__ITEM_BACKFILL": kafka.topics.item_backfill,
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
    except (ValueError, yaml.YAMLError) as error:  # a config file or env var that won't parse
        message = " ".join(str(error).split())
        raise SettingsError(_unparsable_variable(error) or f"cannot read settings: {message}"
                            ) from None
    finally:
        _config_file.reset(token)
