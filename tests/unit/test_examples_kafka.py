"""examples/kafka is what the demo applies: its manifests must stay valid, its broker must advertise the address
it is given, and its policy must carry the Kafka rules the demo shows (no root: parsing only)."""

from __future__ import annotations

from pathlib import Path

import mesh.endpoints.manifest  # noqa: F401  (registers Endpoint)
import mesh.policy.kinds  # noqa: F401  (registers CiliumNetworkPolicy)
from mesh.manifests import load_documents, parse_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kafka"


def test_kafka_example_manifests_parse_and_the_broker_advertises_its_own_address():
    parsed = parse_documents(load_documents([str(EXAMPLES)]))
    kinds = sorted((p.kind, p.name) for p in parsed)
    assert kinds == [("CiliumNetworkPolicy", "kafka-topic1"), ("Endpoint", "consumer"), ("Endpoint", "kafka"),
                     ("Endpoint", "producer")]
    broker = next(p.obj for p in parsed if p.name == "kafka")
    assert broker.labels == {"app": "kafka"}
    assert f"--advertised-listener-url tcp://{broker.ip}:9092" in " ".join(broker.command)
    demo = (Path(__file__).resolve().parents[2] / "scripts" / "demo.d" / "20-kafka.sh").read_text()
    assert f"KF_BROKER={broker.ip}:9092" in demo


def test_kafka_example_policy_has_the_produce_and_consume_rules():
    text = (EXAMPLES / "policy.yaml").read_text()
    (cnp,) = parse_documents(load_documents([str(EXAMPLES / "policy.yaml")]))
    assert "role: produce" in text and "role: consume" in text
    rules = [r for rule in cnp.obj.rules for item in rule.items for pr in item.to_ports for r in (pr.kafka or ())]
    assert sorted((r.role, r.topic) for r in rules) == [("consume", "topic1"), ("produce", "topic1")]
