from __future__ import annotations

from pathlib import Path

import pytest

from esrec.settings import SettingsError, env_var_name, env_var_names, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ESREC_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_local_stack() -> None:
    settings = load_settings()
    assert settings.es.hosts == ["http://127.0.0.1:9200"]
    assert settings.kafka.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.mongo.uri.get_secret_value() == "mongodb://127.0.0.1:27017/"


def test_env_overrides_with_nested_names_and_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESREC_ES__HOSTS", "https://a:9200, https://b:9200")
    monkeypatch.setenv("ESREC_ES__API_KEY", "s3cret")
    monkeypatch.setenv("ESREC_MONGO__COLLECTIONS__ITEMS", "products")
    monkeypatch.setenv("ESREC_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    settings = load_settings()
    assert settings.es.hosts == ["https://a:9200", "https://b:9200"]
    assert settings.mongo.collections.items == "products"
    assert settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert "s3cret" not in settings.model_dump_json()  # secrets stay masked


def test_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "esrec.toml"
    toml.write_text('[index]\nprefix = "from-file"\nserving_alias = "file-alias"\n')
    monkeypatch.setenv("ESREC_INDEX__SERVING_ALIAS", "env-alias")
    settings = load_settings(toml)
    assert (settings.index.prefix, settings.index.serving_alias) == ("from-file", "env-alias")

    yaml = tmp_path / "esrec.yaml"
    yaml.write_text("mongo:\n  database: fromyaml\n")
    monkeypatch.setenv("ESREC_CONFIG", str(yaml))
    assert load_settings().mongo.database == "fromyaml"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.index.prefix = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("ESREC_ES__HOSTS", "localhost:9200", "ESREC_ES__HOSTS"),
        ("ESREC_ES__HOSTS", "localhost:9200", "http://localhost:9200"),
        ("ESREC_MONGO__URI", "postgres://x", "must start with mongodb://"),
        ("ESREC_KAFKA__BOOTSTRAP_SERVERS", "kafka", "is not host:port"),
        ("ESREC_INDEX__PREFIX", "Bad Prefix", "not a valid Elasticsearch name"),
        ("ESREC_INDEX__REFRESH_INTERVAL", "-1", "write a duration such as 1s or 500ms"),
        ("ESREC_KAFKA__SECURITY_PROTOCOL", "SASL_SSL", "needs sasl_mechanism"),
        ("ESREC_ES__USERNAME", "elastic", "needs both username and password"),
        ("ESREC_ES__TYPO", "1", "unknown setting"),
    ],
)
def test_invalid_settings_name_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=expected.replace("+", r"\+")):
        load_settings()


def test_missing_or_unknown_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    ini = tmp_path / "esrec.ini"
    ini.write_text("x")
    with pytest.raises(SettingsError, match=r"\.toml, \.yaml or \.yml"):
        load_settings(ini)


def test_env_var_names_cover_every_leaf() -> None:
    names = env_var_names()
    assert env_var_name(("es", "hosts")) == "ESREC_ES__HOSTS"
    assert {"ESREC_ES__HOSTS", "ESREC_MONGO__COLLECTIONS__DEAD_LETTERS",
            "ESREC_KAFKA__TOPICS__USER_EVENTS", "ESREC_INDEX__SERVING_ALIAS"} <= names
    assert "ESREC_ES" not in names  # sections are not settings themselves


def test_the_readme_settings_table_is_the_generated_one() -> None:
    """Every setting in the model, with its default, is in the README: regenerate with
    `esrec config table` after changing a section."""
    from esrec.settings_table import END, START, table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert START in readme and END in readme
    shown = readme[readme.index(START):readme.index(END) + len(END)]
    assert shown == table()
    for name in ("SEEN_EVENT_IDS", "DEFAULT_K", "MAX_K", "I2I_ITEMS", "I2I_MIN_SIMILARITY",
                 "FRESH_HALF_LIFE_DAYS"):
        assert f"`ESREC_RECALL__{name}`" in shown
