"""`esrec demo` in a reduced size against the test servers: every check passes, the
report and its plots are written, and no daemon is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from pymongo import MongoClient

from esrec.lifetime import die_with_parent
from esrec.settings import Settings
from indexer.layout import delete_indices

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace(unique: Callable[[str], str], es: Elasticsearch,
              mongo_client: MongoClient) -> Iterator[str]:
    name = unique("demo")
    yield name
    delete_indices(es, f"{name}-*")
    mongo_client.drop_database(name.replace("-", "_"))


def test_demo_end_to_end_in_small(settings: Settings, namespace: str, tmp_path: Path) -> None:
    env = {**os.environ, "ESREC_ES__HOSTS": ",".join(settings.es.hosts),
           "ESREC_MONGO__URI": settings.mongo.uri.get_secret_value(),
           "ESREC_KAFKA__BOOTSTRAP_SERVERS": ",".join(settings.kafka.bootstrap_servers)}
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "esrec", "demo", "--items", "400", "--users", "150",
         "--epochs", "1", "--namespace", namespace, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, preexec_fn=die_with_parent)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "demo passed" in result.stdout
    report = (out / "report.md").read_text()
    assert "FAILED" not in report
    for step in ("build demo-two-tower@1", "recall with provenance",
                 "catalog changes -> index -> recall", "roll demo-two-tower@2",
                 "roll back to demo-two-tower@1", "stop the daemons"):
        assert step in report
    for plot in ("training.png", "indexing.png", "recall_latency.png"):
        assert (out / plot).stat().st_size > 5000
    assert "`esrec indexer run` exit 0" in report and "`esrec recall events` exit 0" in report
    assert "SOURCES (channel rank)" in report  # recall tables with provenance
