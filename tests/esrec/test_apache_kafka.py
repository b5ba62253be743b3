"""The Apache Kafka node's pieces that need no JVM: its cluster ids and its settings."""

from __future__ import annotations

from pathlib import Path

from esrec import apache_kafka


def test_cluster_ids_are_kafkas_shape_and_never_read_as_an_option() -> None:
    ids = {apache_kafka._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_single_node_combines_broker_and_controller_on_loopback(tmp_path: Path) -> None:
    lines = dict(line.split("=", 1) for line in apache_kafka.server_properties(
        tmp_path, "127.0.0.1", 9092, 9093).splitlines() if line)
    assert lines["process.roles"] == "broker,controller"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert lines["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert lines["log.dirs"] == str(tmp_path / "log")
    assert lines["offsets.topic.replication.factor"] == "1"
