"""Converters: datapath events, Envoy access-log records and Kafka proxy records become flows
with both sides' identities, labels, namespaces and pods resolved."""

from __future__ import annotations

import json

from bpf.maps import Direction as BpfDirection, Event, EventType, Reason, Verdict as BpfVerdict
from mesh.flows.model import (
    Enricher, FlowType, L7Type, Verdict, flow_from_datapath_event, flow_from_http_record,
    flow_from_kafka_record, workload_name,
)
from xdsserver.als import L7Record

IDENTITIES = {256: {"app": "deathstar", "io.kubernetes.pod.namespace": "default"},
              257: {"app": "xwing", "io.kubernetes.pod.namespace": "default"}}
PODS = {"10.1.0.5": ("default", "xwing-7d9f8b6c4-abcde", {"app": "xwing"}),
        "10.1.0.9": ("default", "deathstar-6fb5694d-q2x7z", {"app": "deathstar"})}
IPCACHE = {"10.1.0.5": 257, "10.1.0.9": 256}


def enricher() -> Enricher:
    return Enricher(identity_labels=IDENTITIES.get, endpoint_by_ip=PODS.get,
                    identity_by_ip=IPCACHE.get,
                    service_by_ip_port=lambda ip, port: ("default", "deathstar") if (ip, port) == ("10.1.0.9", 80) else None,
                    node_name="node-a")


def drop_event() -> Event:
    return Event(ts_ns=1_000, type=EventType.DROP, reason=Reason.POLICY_DEFAULT_DENY,
                 direction=BpfDirection.INGRESS, proto=6, ep_id=12, proxy_port=0, src_identity=257,
                 dst_identity=256, saddr="10.1.0.5", daddr="10.1.0.9", sport=41000, dport=80, ifindex=7,
                 verdict=BpfVerdict.DROPPED, tcp_flags=0x02, length=60)


def test_drop_event_carries_both_identities_labels_and_pods():
    f = flow_from_datapath_event(drop_event(), enricher(), time=1_700_000_000.0)
    assert f.verdict is Verdict.DROPPED and f.type is FlowType.DROP
    assert f.drop_reason_desc == "POLICY_DENIED"
    assert (f.source.identity, f.destination.identity) == (257, 256)
    assert "app=xwing" in f.source.labels and "app=deathstar" in f.destination.labels
    assert f.source.pod_name == "xwing-7d9f8b6c4-abcde" and f.source.workload == "xwing"
    assert f.destination.namespace == "default"
    assert f.tcp_flags == ("SYN",) and f.protocol == "TCP"
    assert f.destination_service is not None and f.destination_service.name == "deathstar"
    j = json.loads(json.dumps(f.to_json()))
    assert j["verdict"] == "DROPPED" and j["drop_reason_desc"] == "POLICY_DENIED"
    assert j["IP"] == {"source": "10.1.0.5", "destination": "10.1.0.9", "ipVersion": "IPv4"}
    assert j["l4"]["TCP"] == {"source_port": 41000, "destination_port": 80, "flags": {"SYN": True}}
    assert j["source"]["pod_name"] == "xwing-7d9f8b6c4-abcde"
    assert j["destination"]["workloads"] == [{"name": "deathstar", "kind": "Workload"}]
    assert j["traffic_direction"] == "INGRESS" and j["node_name"] == "node-a"
    assert j["event_type"]["type"] == 1
    assert j["Summary"] == "TCP Flags: SYN"


def test_trace_event_is_forwarded_without_drop_reason():
    ev = drop_event()
    import dataclasses
    ev = dataclasses.replace(ev, type=EventType.TRACE, reason=Reason.NEW_FLOW, verdict=BpfVerdict.FORWARDED)
    f = flow_from_datapath_event(ev, enricher(), time=1.0)
    assert f.verdict is Verdict.FORWARDED and f.type is FlowType.TRACE
    assert "drop_reason_desc" not in f.to_json()
    assert f.to_json()["event_type"]["type"] == 4


def test_reserved_world_identity_gets_reserved_label():
    ev = drop_event()
    import dataclasses
    ev = dataclasses.replace(ev, src_identity=2, saddr="192.0.2.1")
    f = flow_from_datapath_event(ev, enricher(), time=1.0)
    assert f.source.labels == ("reserved:world=",)
    assert f.source.pod_name == ""


def http_record(**kw) -> L7Record:
    base = dict(time=1_700_000_000.5, node_id="node-a", log_name="ing", source_ip="10.1.0.5",
                source_port=41000, destination_ip="10.1.0.9", destination_port=80, method="POST",
                authority="deathstar.default", path="/v1/request-landing", protocol="HTTP/1.1",
                response_code=200, response_code_details="via_upstream", response_flags=(),
                duration_ms=3.5, grpc_status=None, grpc_message="", upstream_cluster="orig",
                upstream_address="10.1.0.9:80", route_name="r", rbac_denied=False,
                tags={"ostium.direction": "ingress"})
    base.update(kw)
    return L7Record(**base)


def test_http_record_allowed_and_denied():
    ok = flow_from_http_record(http_record(), enricher())
    assert ok.verdict is Verdict.FORWARDED and ok.type is FlowType.L7
    assert ok.l7 is not None and ok.l7.type is L7Type.RESPONSE and ok.l7.latency_ns == 3_500_000
    assert ok.l7.http.method == "POST" and ok.l7.http.code == 200
    assert ok.l7.http.url == "http://deathstar.default/v1/request-landing"
    assert ok.source.identity == 257 and "app=xwing" in ok.source.labels     # via the ipcache
    assert ok.destination.pod_name.startswith("deathstar")
    denied = flow_from_http_record(http_record(method="PUT", path="/v1/exhaust-port", response_code=403,
                                               rbac_denied=True), enricher())
    assert denied.verdict is Verdict.DROPPED and denied.l7.type is L7Type.REQUEST
    j = denied.to_json()
    assert j["l7"]["http"]["code"] == 403 and j["drop_reason_desc"] == "L7_POLICY_DENIED"
    assert j["Type"] == "L7" and j["event_type"]["type"] == 129
    assert denied.summary() == "HTTP/1.1 PUT http://deathstar.default/v1/exhaust-port"


def test_http_reset_without_response_is_error():
    f = flow_from_http_record(http_record(response_code=0), enricher())
    assert f.verdict is Verdict.ERROR


class KafkaRec:
    api_key = "produce"
    api_version = 9
    topics = ("empire-announce",)
    client_id = "rebels"
    verdict = "denied"
    latency_ms = 1.25
    src = "10.1.0.5:50000"
    dst = "10.1.0.9:9092"
    correlation_id = 7


def test_kafka_record_object_and_dict():
    f = flow_from_kafka_record(KafkaRec(), enricher())
    assert f.verdict is Verdict.DROPPED and f.l7.kafka.api_key == "produce"
    assert f.l7.kafka.topics == ("empire-announce",) and f.l7.kafka.error_code == 29
    assert f.l7.latency_ns == 1_250_000 and f.source.identity == 257 and f.destination.port == 9092
    assert f.to_json()["l7"]["kafka"]["topic"] == "empire-announce"
    g = flow_from_kafka_record({"api_key": "fetch", "api_version": 13, "topics": ["deathstar-plans"],
                                "client_id": "c", "verdict": "allowed", "latency": 0.002,
                                "src": ("10.1.0.5", 50001), "dst": ("10.1.0.9", 9092)}, enricher())
    assert g.verdict is Verdict.FORWARDED and g.l7.kafka.error_code == 0
    assert g.l7.latency_ns == 2_000_000 and "app=deathstar" in g.destination.labels


def test_workload_names():
    assert workload_name("xwing-7d9f8b6c4-abcde", {}) == "xwing"
    assert workload_name("kafka-0", {}) == "kafka"
    assert workload_name("client", {}) == "client"
    assert workload_name("whatever-1", {"app": "web"}) == "web"


def test_kafka_proxy_record_type():
    from l7parsers.kafkaproxy import KafkaRecord, Verdict as KV
    denied = KafkaRecord(time=1.0, verdict=KV.DENIED, src_ip="10.1.0.5", src_port=50000, dst_ip="10.1.0.9",
                         dst_port=9092, api_key=0, api="produce", api_version=11, correlation_id=4,
                         client_id="rebels", topics=("empire-announce",), src_identity=257, error_code=29,
                         latency_s=0.0004)
    f = flow_from_kafka_record(denied, enricher())
    assert f.verdict is Verdict.DROPPED and f.drop_reason_desc == "L7_POLICY_DENIED"
    assert (f.l7.kafka.api_key, f.l7.kafka.api_version, f.l7.kafka.topics) == ("produce", 11, ("empire-announce",))
    assert f.l7.kafka.correlation_id == 4 and f.l7.kafka.client_id == "rebels" and f.l7.latency_ns == 400_000
    assert f.source.identity == 257 and "app=xwing" in f.source.labels and f.destination.port == 9092
    ok = KafkaRecord(time=2.0, verdict=KV.FORWARDED, src_ip="10.1.0.5", src_port=50000, dst_ip="10.1.0.9",
                     dst_port=9092, api_key=1, api="fetch", topics=("deathstar-plans",))
    g = flow_from_kafka_record(ok, enricher())
    assert g.verdict is Verdict.FORWARDED and g.l7.kafka.error_code == 0 and g.l7.kafka.api_version == 0
    err = KafkaRecord(time=3.0, verdict=KV.ERROR, src_ip="10.1.0.5", src_port=1, dst_ip="10.1.0.9", dst_port=9092,
                      reason="cannot connect")
    assert flow_from_kafka_record(err, enricher()).verdict is Verdict.ERROR


def test_cilium_style_source_labels_and_selectors():
    from mesh.flows.filters import parse_filters
    ident = {300: {"k8s:app": "xwing", "k8s:io.kubernetes.pod.namespace": "empire",
                   "k8s:io.cilium.k8s.policy.serviceaccount": "pilot"},
             16777217: {"cidr:192.0.2.0/24": "", "reserved:world": ""}}
    en = Enricher(identity_labels=ident.get,
                  endpoint_by_ip={"10.1.0.5": ("empire", "xwing-0", {"app": "xwing", "version": "v1"})}.get)
    ev = drop_event()
    import dataclasses
    f = flow_from_datapath_event(dataclasses.replace(ev, src_identity=300, dst_identity=16777217,
                                                     daddr="192.0.2.9"), en, time=1.0)
    assert f.source.labels == ("k8s:app=xwing", "k8s:io.cilium.k8s.policy.serviceaccount=pilot",
                               "k8s:io.kubernetes.pod.namespace=empire", "k8s:version=v1")
    assert (f.source.namespace, f.source.workload) == ("empire", "xwing")
    assert f.destination.labels == ("cidr:192.0.2.0/24=", "reserved:world=")
    for selector, want in [("app=xwing", True), ("k8s:app=xwing", True), ("any:app=xwing", True),
                           ("version=v1", True), ("reserved:app=xwing", False), ("app=tie", False),
                           ("!k8s:app", False), ("io.cilium.k8s.policy.serviceaccount=pilot", True)]:
        assert parse_filters({"from-label": selector}).match(f) is want, selector
    assert parse_filters({"to-label": "reserved:world"}).match(f)
    assert parse_filters({"to-label": "cidr:192.0.2.0/24"}).match(f)
