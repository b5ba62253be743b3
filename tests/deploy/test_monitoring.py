"""deploy/prometheus and deploy/grafana: valid files, provisioned in the compose file,
scraping the ports the services serve, and naming only metrics the code exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from indexer.canary_store import Canary
from indexer.metrics import IndexerMetrics
from indexer.relay import RelayMetrics
from indexer.topic_source import WorkerMetrics
from recall.canary import CanaryCollector
from recall.metrics import EventMetrics, RecallMetrics

DEPLOY = Path(__file__).parents[2] / "deploy"
METRIC = re.compile(r"\b(esrec_[a-z0-9_]+)")
PROMETHEUS_OWN = {"up"}  # what Prometheus adds to every target


def _exposed() -> set[str]:
    """Every sample name the code's registries can expose."""
    indexer = IndexerMetrics()
    WorkerMetrics(indexer.registry)
    recall = RecallMetrics()
    registries: list[CollectorRegistry] = [indexer.registry, RelayMetrics().registry,
                                           recall.registry, EventMetrics().registry]
    canary = CollectorRegistry()
    canary.register(CanaryCollector(lambda: None))
    registries.append(canary)
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",), "summary": ("_count", "_sum", "")}
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    return _exposed()


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (
            [value] if key == "expr" and isinstance(value, str) else _expressions(value))]
    if isinstance(node, list):
        return [text for value in node for text in _expressions(value)]
    return []


def test_alert_rules_are_complete_and_name_real_metrics(exposed: set[str]) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"EsrecIndexerLagHigh", "EsrecErrorBudgetBurning", "EsrecNoLeaderRelay",
            "EsrecDeadLettersRising"} <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        assert rule["labels"]["severity"] in ("page", "ticket", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        named = set(METRIC.findall(rule["expr"]))
        assert named <= exposed, (rule["alert"], named - exposed)
        assert named or any(f"{own}{{" in rule["expr"] for own in PROMETHEUS_OWN), rule


def test_the_dashboard_names_real_metrics(exposed: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "esrec.json").read_text())
    expressions = _expressions(dashboard["panels"])
    assert len(expressions) >= 25
    named = {name for expr in expressions for name in METRIC.findall(expr)}
    assert named - exposed == set()
    # what the issue asks the dashboard to show, one metric each
    assert {"esrec_indexer_events_total", "esrec_indexer_lag_seconds",
            "esrec_indexer_stale_writes_total", "esrec_indexer_dead_letters_total",
            "esrec_indexer_retries_total", "esrec_indexer_bulk_seconds_bucket",
            "esrec_recall_stage_seconds_bucket", "esrec_recall_degraded_total",
            "esrec_recall_seconds_count", "esrec_user_events_lag"} <= named
    sources = {target["datasource"]["uid"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])}
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                                  "prometheus.yml").read_text())
    assert sources == {source["uid"] for source in provisioned["datasources"]}


def test_prometheus_scrapes_each_service_where_it_serves() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    for job in config["scrape_configs"]:
        targets = [t for static in job.get("static_configs", []) for t in static["targets"]]
        targets += [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", [])
                    for name in sd["names"]]
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in services, target
            published = [p.split(":")[-1] for p in services[host].get("ports", [])]
            command = " ".join(services[host].get("command", []))
            # a published port, or the indexer's default metrics port (relays, workers)
            assert port in published or (port == "9464" and "indexer" in command), target
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./grafana/provisioning" in mounts and "./grafana/dashboards" in mounts


def test_a_canary_shows_on_metrics() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    canary = Canary("c1", "m@2", "m@1", "i", 0.2, "running", now, now + timedelta(hours=1),
                    now + timedelta(hours=2), {"candidate": {"ctr": 0.5}})
    registry = CollectorRegistry()
    registry.register(CanaryCollector(lambda: canary))
    assert registry.get_sample_value("esrec_canary_share") == 0.2
    assert registry.get_sample_value("esrec_canary_info", {
        "candidate": "m@2", "baseline": "m@1", "state": "running"}) == 1.0
    assert registry.get_sample_value("esrec_canary_figure", {
        "arm": "candidate", "figure": "ctr"}) == 0.5
