"""Kafka L7 policy through the whole agent: a Tansu broker runs inside an endpoint (app=kafka), clients run
inside other endpoints with the real client libraries (kafka-python, aiokafka, confluent-kafka); the eBPF
datapath hands their flows to the broker's port to the agent's Kafka proxy (bpf_sk_assign), which enforces
examples/kafka/policy.yaml (+ an apiKey/clientID rule for a "reporter"), and egress Kafka rules on a client
through the egress proxy. Checked as a user notices it: the error each library raises, `ostium observe --protocol
kafka`, /metrics, and with the Kafka proxy off, Kafka-rule flows refused at once instead of reaching the broker
unenforced."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, wait_for
from tests.kafka_fixture import tansu_binary

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "kafka"
CLIENT = str(EXAMPLES / "client.py")
BROKER_IP = "10.222.0.90"
BOOTSTRAP = f"{BROKER_IP}:9092"


def endpoints() -> str:
    tansu = tansu_binary()
    docs = [f"""apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: kafka
  labels: {{app: kafka}}
spec:
  ip: {BROKER_IP}
  command: [{json.dumps(tansu)}, broker, --listener-url, "tcp://0.0.0.0:9092",
            --advertised-listener-url, "tcp://{BOOTSTRAP}", --storage-engine, "memory://tansu/"]
  ports: [{{name: kafka, port: 9092}}]
"""]
    for app in ("producer", "consumer", "intruder", "reporter"):
        docs.append(f"""apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: {app}
  labels: {{app: {app}}}
""")
    return "---\n".join(docs)


# apiKey and clientID rules: the reporter may produce to topic2, but only as client "reporter-1".
REPORTER_POLICY = """---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-reporter}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: reporter}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - apiKey: apiversions
        - apiKey: metadata
        - apiKey: initproducerid
        - apiKey: produce
          topic: topic2
          clientID: reporter-1
"""

# aiokafka and confluent-kafka producers: one JSON line {"ok": ...} or {"error": "<the library's error>"}.
AIOKAFKA_PRODUCE = r"""
import asyncio, json, sys
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
async def main(bootstrap, topic):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="aio-producer")
    await p.start()
    try:
        md = await asyncio.wait_for(p.send_and_wait(topic, b"from aiokafka"), 8)
        return {"ok": True, "offset": md.offset}
    except KafkaError as e:
        return {"ok": False, "error": type(e).__name__}
    finally:
        await p.stop()
print(json.dumps(asyncio.run(main(*sys.argv[1:3]))), flush=True)
"""

CONFLUENT_PRODUCE = r"""
import json, sys
from confluent_kafka import Producer
out = {}
p = Producer({"bootstrap.servers": sys.argv[1], "client.id": "ck-producer", "message.timeout.ms": 6000,
              "socket.timeout.ms": 3000, "topic.metadata.refresh.interval.ms": 1000})
def report(err, msg):
    out.update({"ok": True, "offset": msg.offset()} if err is None else {"ok": False, "error": err.name()})
p.produce(sys.argv[2], b"from confluent-kafka", callback=report)
p.flush(10)
print(json.dumps(out or {"ok": False, "error": "no delivery report"}), flush=True)
"""

# A plain TCP connect from an endpoint: "connected", "timeout" or the errno name.
CONNECT = r"""
import errno, socket, sys, time
t0 = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    out = "connected"
except socket.timeout:
    out = "timeout"
except OSError as e:
    out = errno.errorcode.get(e.errno, str(e))
print(out, round(time.monotonic() - t0, 3), flush=True)
"""


@pytest.fixture(scope="module")
def node():
    a = AgentProcess(pod_cidr="10.222.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", "-", input=endpoints())
        wait_for(lambda: connect(a, "producer", 1.0)[0] == "connected", 20, what="the broker listening in its endpoint")
        apply_and_wait(a, (EXAMPLES / "policy.yaml").read_text() + REPORTER_POLICY)
        yield a
    finally:
        a.cleanup()


def apply_and_wait(a: AgentProcess, manifest: str) -> None:
    a.cli("apply", "-f", "-", input=manifest)

    def applied():
        comps = a.cli_json("status")["components"]
        return comps["datapath"]["applied_policy_revision"] == comps["policy"]["revision"]
    wait_for(applied, 15, what="policy applied to the datapath")


def connect(a: AgentProcess, ep: str, timeout: float) -> tuple[str, float]:
    r = a.raw_exec(f"default.{ep}", sys.executable, "-c", CONNECT, BROKER_IP, "9092", str(timeout),
                   timeout=timeout + 10)
    out, took = r.stdout.split()
    return out, float(took)


def client(a: AgentProcess, ep: str, *args: str, timeout: float = 30) -> dict:
    r = a.raw_exec(f"default.{ep}", sys.executable, CLIENT, *args, "--json", timeout=timeout)
    assert r.stdout.strip(), f"client.py {args} printed nothing (exit {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def script(a: AgentProcess, ep: str, code: str, *args: str, timeout: float = 30) -> dict:
    r = a.raw_exec(f"default.{ep}", sys.executable, "-c", code, *args, timeout=timeout)
    assert r.stdout.strip(), f"script printed nothing (exit {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def observe(a: AgentProcess, *args: str) -> list[dict]:
    out = a.cli("observe", "--protocol", "kafka", *args, "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_producer_produces_to_topic1_and_is_denied_topic2(node):
    ok = client(node, "producer", "produce", BOOTSTRAP, "topic1", "hello")
    assert ok["ok"] and ok["offset"] >= 0, ok
    denied = client(node, "producer", "produce", BOOTSTRAP, "topic2", "nope")
    assert denied == {**denied, "ok": False, "error": "TopicAuthorizationFailedError"}, denied
    assert denied["seconds"] < 5, "a denial is an answer: it must not wait for a timeout"


def test_aiokafka_and_confluent_producers_see_their_own_authorization_error(node):
    assert script(node, "producer", AIOKAFKA_PRODUCE, BOOTSTRAP, "topic1")["ok"]
    assert script(node, "producer", AIOKAFKA_PRODUCE, BOOTSTRAP, "topic2") == \
        {"ok": False, "error": "TopicAuthorizationFailedError"}
    assert script(node, "producer", CONFLUENT_PRODUCE, BOOTSTRAP, "topic1")["ok"]
    assert script(node, "producer", CONFLUENT_PRODUCE, BOOTSTRAP, "topic2") == \
        {"ok": False, "error": "TOPIC_AUTHORIZATION_FAILED"}


def test_consumer_group_consumes_topic1_and_cannot_produce(node):
    for i in range(2):
        assert client(node, "producer", "produce", BOOTSTRAP, "topic1", f"m{i}")["ok"]
    got = client(node, "consumer", "consume", BOOTSTRAP, "topic1", "--group", "g1", "--expect", "m0", "--expect", "m1")
    assert got["ok"] and {"m0", "m1"} <= set(got["messages"]), got
    denied = client(node, "consumer", "produce", BOOTSTRAP, "topic1", "sneaky")
    assert denied["error"] == "TopicAuthorizationFailedError", denied
    flows = observe(node, "--from-label", "app=consumer", "--last", "200")
    apis = {f["l7"]["kafka"]["api_key"] for f in flows if f["verdict"] == "FORWARDED"}
    assert {"findcoordinator", "joingroup", "syncgroup", "fetch", "offsetcommit"} <= apis, apis


def test_intruder_without_rule_is_dropped_at_l3_l4(node):
    out, took = connect(node, "intruder", 1.5)
    assert out == "timeout", (out, took)
    r = client(node, "intruder", "produce", BOOTSTRAP, "topic1", "x", "--timeout-ms", "2000")
    assert r["ok"] is False and r["error"] in ("KafkaConnectionError", "KafkaTimeoutError"), r


def test_api_key_and_client_id_rules(node):
    ok = client(node, "reporter", "produce", BOOTSTRAP, "topic2", "report", "--client-id", "reporter-1")
    assert ok["ok"], ok
    other = client(node, "reporter", "produce", BOOTSTRAP, "topic2", "report", "--client-id", "someone-else")
    assert other["error"] == "TopicAuthorizationFailedError", other
    wrong_topic = client(node, "reporter", "produce", BOOTSTRAP, "topic1", "x", "--client-id", "reporter-1")
    assert wrong_topic["error"] == "TopicAuthorizationFailedError", wrong_topic


def test_observe_shows_kafka_flows_with_api_topic_verdict_and_both_sides(node):
    assert client(node, "producer", "produce", BOOTSTRAP, "topic1", "seen")["ok"]
    client(node, "producer", "produce", BOOTSTRAP, "topic2", "nope")

    def seen():
        flows = observe(node, "--from-label", "app=producer", "--last", "500")
        kinds = {(f["verdict"], f["l7"]["kafka"]["api_key"], f["l7"]["kafka"]["topic"]) for f in flows}
        # kafka-python learns of the denial from Metadata (TOPIC_AUTHORIZATION_FAILED) and never sends the Produce
        return ("FORWARDED", "produce", "topic1") in kinds and ("DROPPED", "metadata", "topic2") in kinds and flows
    flows = wait_for(seen, 10, what="a forwarded Produce to topic1 and a denied Metadata for topic2")
    for f in flows:
        assert "k8s:app=producer" in f["source"]["labels"] and "k8s:app=kafka" in f["destination"]["labels"], f
        assert f["destination"]["pod_name"] == "kafka" and f["IP"]["destination"] == BROKER_IP
        assert f["traffic_direction"] == "INGRESS"  # the broker's ingress rules decided
        assert f["l7"]["kafka"]["client_id"] and f["l7"]["kafka"]["api_version"] >= 0
    # confluent-kafka (librdkafka 2.x) also asks GetTelemetrySubscriptions (no topics), which no role covers:
    # denied with CLUSTER_AUTHORIZATION_FAILED (31), harmlessly. Every denial that names a topic is topic2's.
    denied = [f for f in flows if f["verdict"] == "DROPPED" and f["l7"]["kafka"]["topic"]]
    assert all("topic2" in f["l7"]["kafka"]["topic"] and f["l7"]["kafka"]["error_code"] == 29 for f in denied), \
        [(f["l7"]["kafka"]["api_key"], f["l7"]["kafka"]["topic"], f["l7"]["kafka"]["error_code"]) for f in denied]
    assert "topic2" not in {f["l7"]["kafka"]["topic"] for f in flows if f["verdict"] == "FORWARDED"}
    # the filter by topic, the metrics and the proxy's counters
    assert all(f["l7"]["kafka"]["topic"] == "topic2" for f in observe(node, "--kafka-topic", "topic2"))
    r = node.node_exec("curl", "-s", "--max-time", "2", "http://127.0.0.1:9962/metrics")
    assert 'ostium_kafka_requests_total{api_key="metadata",topic="topic2",verdict="DROPPED"}' in r.stdout
    assert 'ostium_kafka_requests_total{api_key="produce",topic="topic1",verdict="FORWARDED"}' in r.stdout
    kafka = node.cli_json("status")["components"]["kafka"]
    assert kafka["state"] == "running" and kafka["ingress"]["denied"] > 0 and kafka["ingress"]["forwarded"] > 0
    assert kafka["ingress"]["internal_errors"] == 0 and kafka["ingress"]["rejected_frames"] == 0


EGRESS_POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: producer-egress}
spec:
  endpointSelector: {matchLabels: {app: producer}}
  egress:
  - toEndpoints: [{matchLabels: {app: kafka}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: topic3}]
"""


def test_egress_kafka_rules_on_the_client(node):
    """The broker without ingress policy; the producer's own egress rules go through the egress Kafka proxy."""
    ingress = (EXAMPLES / "policy.yaml").read_text() + REPORTER_POLICY
    node.cli("delete", "-f", "-", input=ingress)
    try:
        apply_and_wait(node, EGRESS_POLICY)
        ok = client(node, "producer", "produce", BOOTSTRAP, "topic3", "via egress")
        assert ok["ok"], ok
        assert client(node, "producer", "produce", BOOTSTRAP, "topic1", "x")["error"] == "TopicAuthorizationFailedError"
        # Without ingress policy on the broker, others reach it unfiltered (no rule selects them).
        assert client(node, "intruder", "produce", BOOTSTRAP, "topic1", "free")["ok"]
        kafka = node.cli_json("status")["components"]["kafka"]
        assert kafka["egress"]["forwarded"] > 0 and kafka["egress"]["denied"] > 0, kafka
        flows = observe(node, "--kafka-topic", "topic3", "--last", "50")
        assert flows and {f["traffic_direction"] for f in flows} == {"EGRESS"}, flows
        assert all("k8s:app=producer" in f["source"]["labels"] for f in flows)
        # Kafka rules at both ends of one node-local flow: one proxy pass cannot enforce both; refused, never
        # half-enforced (bpf/README.md "L7 redirect").
        apply_and_wait(node, ingress)
        assert wait_for(lambda: connect(node, "producer", 2.0)[0] == "ECONNREFUSED", 10, what="both-ends refusal")
    finally:
        node.cli("delete", "-f", "-", input=EGRESS_POLICY, check=False)
        apply_and_wait(node, ingress)
    assert client(node, "producer", "produce", BOOTSTRAP, "topic1", "again")["ok"]


def test_without_the_kafka_proxy_kafka_rule_flows_are_refused_not_bypassed(node):
    """Last on purpose: restarts the agent without the Kafka proxy (config kafka_proxy: false), then with it."""
    node.stop()
    node.extra_args = ["--no-kafka-proxy"]
    node.start()
    try:
        # The agent restarted with the endpoints and the policy it had; the datapath has no Kafka proxy port.
        out, took = wait_for(lambda: (r := connect(node, "producer", 2.0))[0] == "ECONNREFUSED" and r, 15,
                             what="Kafka-rule flows refused while the Kafka proxy is off")
        assert took < 1.0, "refused with a reset, not left to time out"
        r = client(node, "producer", "produce", BOOTSTRAP, "topic1", "bypass", "--timeout-ms", "2000")
        assert r["ok"] is False and r["error"] in ("KafkaConnectionError", "KafkaTimeoutError"), r
        dp = node.cli_json("status")["components"]["datapath"]["l7_redirect"]
        assert dp["refused_flows"] > 0 and "kafka-ingress" not in dp["proxy_ports"], dp
        # The intruder is still dropped at L3/L4 (silence, not a reset: its flow has no L7 rule at all).
        assert connect(node, "intruder", 1.0)[0] == "timeout"
    finally:
        node.stop()
        node.extra_args = []
        node.start()
    # Back: enforcing again, and nothing of the refused attempt reached the broker.
    wait_for(lambda: client(node, "producer", "produce", BOOTSTRAP, "topic1", "after")["ok"], 20,
             what="producing through the Kafka proxy again")
    assert client(node, "producer", "produce", BOOTSTRAP, "topic2", "nope")["error"] == "TopicAuthorizationFailedError"
    got = client(node, "consumer", "consume", BOOTSTRAP, "topic1", "--group", "g-after", "--count", "100",
                 "--timeout-ms", "4000")
    assert "after" in got["messages"] and "bypass" not in got["messages"], got
