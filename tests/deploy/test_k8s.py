"""deploy/k8s cannot run here: parse every manifest, check each against the shape of its
Kubernetes API kind (JSON Schema), and check what ties them together: selectors and
labels, probes on the ports the containers open, readiness separate from liveness,
config and secrets that exist and name only real settings, an HPA on the workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from esrec.settings import env_var_names

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": NAME, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
PORT = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, NAME]}
PROBE = {"type": "object", "properties": {
    "httpGet": {"type": "object", "required": ["path", "port"],
                "properties": {"path": {"type": "string", "pattern": "^/"}, "port": PORT}},
    "tcpSocket": {"type": "object", "required": ["port"], "properties": {"port": PORT}},
    "periodSeconds": {"type": "integer", "minimum": 1},
    "failureThreshold": {"type": "integer", "minimum": 1}},
    "oneOf": [{"required": ["httpGet"]}, {"required": ["tcpSocket"]}]}
CONTAINER = {"type": "object", "required": ["name", "image"], "properties": {
    "name": NAME, "image": {"type": "string"},
    "args": {"type": "array", "items": {"type": "string"}},
    "envFrom": {"type": "array", "items": {"type": "object", "properties": {
        "configMapRef": {"type": "object", "required": ["name"]},
        "secretRef": {"type": "object", "required": ["name"]}}}},
    "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                                         "properties": {"name": NAME,
                                                        "containerPort": PORT}}},
    "readinessProbe": PROBE, "livenessProbe": PROBE,
    "resources": {"type": "object", "properties": {"requests": {"type": "object"},
                                                   "limits": {"type": "object"}}}},
    "additionalProperties": False}
SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "ConfigMap"): {"type": "object", "required": ["metadata", "data"], "properties": {
        "metadata": METADATA, "data": {"type": "object",
                                       "additionalProperties": {"type": "string"}}}},
    ("v1", "Secret"): {"type": "object", "required": ["metadata"], "properties": {
        "metadata": METADATA, "type": {"type": "string"},
        "stringData": {"type": "object", "additionalProperties": {"type": "string"}}}},
    ("v1", "Service"): {"type": "object", "required": ["metadata", "spec"], "properties": {
        "metadata": METADATA, "spec": {"type": "object", "required": ["selector", "ports"],
                                       "properties": {"ports": {"type": "array", "minItems": 1}}}}},
    ("apps/v1", "Deployment"): {"type": "object", "required": ["metadata", "spec"],
                                "properties": {"metadata": METADATA, "spec": {
        "type": "object", "required": ["selector", "template"], "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "selector": {"type": "object", "required": ["matchLabels"]},
            "template": {"type": "object", "required": ["metadata", "spec"], "properties": {
                "metadata": METADATA | {"required": ["labels"]},
                "spec": {"type": "object", "required": ["containers"], "properties": {
                    "terminationGracePeriodSeconds": {"type": "integer"},
                    "containers": {"type": "array", "minItems": 1,
                                   "items": CONTAINER}}}}}}}}},
    ("autoscaling/v2", "HorizontalPodAutoscaler"): {
        "type": "object", "required": ["metadata", "spec"], "properties": {
            "metadata": METADATA, "spec": {
                "type": "object", "required": ["scaleTargetRef", "maxReplicas", "metrics"],
                "properties": {
                    "scaleTargetRef": {"type": "object", "required": ["kind", "name"]},
                    "minReplicas": {"type": "integer", "minimum": 1},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                    "metrics": {"type": "array", "minItems": 1}}}}},
}


def _documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _documents()}


@pytest.mark.parametrize("document", _documents(),
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_has_the_shape_of_its_kind(document: dict[str, Any]) -> None:
    schema = SCHEMAS.get((document["apiVersion"], document["kind"]))
    assert schema is not None, f"no schema for {document['apiVersion']} {document['kind']}"
    jsonschema.validate(document, schema)


def test_deployments_are_wired_consistently(
        manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployments = [d for (kind, _), d in manifests.items() if kind == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {
        "esrec-relay", "esrec-worker", "esrec-events", "esrec-recall"}
    known = env_var_names()
    for deployment in deployments:
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        for container in spec["template"]["spec"]["containers"]:
            ports = {p.get("name") for p in container["ports"]} | {
                p["containerPort"] for p in container["ports"]}
            ready, live = container["readinessProbe"], container["livenessProbe"]
            assert ready != live, "readiness and liveness must not be the same probe"
            for probe in (ready, live):
                target = probe.get("httpGet") or probe["tcpSocket"]
                assert target["port"] in ports
            assert ready["httpGet"]["path"] == "/healthz"
            for source in container["envFrom"]:
                kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in \
                    source else ("Secret", source["secretRef"])
                assert (kind, ref["name"]) in manifests, ref
    relay = manifests[("Deployment", "esrec-relay")]
    assert relay["spec"]["replicas"] >= 2  # a leader and a standby
    for name in ("esrec-relay", "esrec-worker", "esrec-events"):
        container = manifests[("Deployment", name)]["spec"]["template"]["spec"][
            "containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    config = manifests[("ConfigMap", "esrec-config")]["data"]
    secrets = manifests[("Secret", "esrec-secrets")]["stringData"]
    assert set(config) | set(secrets) <= known
    assert config["ESREC_INDEXER__MODE"] == "distributed"


def test_workers_scale_on_lag_up_to_the_partitions(
        manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = manifests[("HorizontalPodAutoscaler", "esrec-worker")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "esrec-worker"
    partitions = int(manifests[("ConfigMap", "esrec-config")]["data"][
        "ESREC_INDEXER__PARTITIONS"])
    assert hpa["maxReplicas"] <= partitions  # more workers than partitions would idle
    assert hpa["metrics"][0]["external"]["metric"]["name"] == "esrec_worker_lag"
