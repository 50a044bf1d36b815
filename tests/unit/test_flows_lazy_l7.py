"""Lazy access-log records (what the agent's ALS receiver hands on) count and read back exactly like
eagerly built L7Records: same counters, same flows; the flow is built once and only when read."""

from __future__ import annotations

import dataclasses

from envoy.data.accesslog.v3 import accesslog_pb2

from mesh.flows.model import Enricher
from mesh.flows.observer import Observer
from xdsserver.als import LazyL7Record, record_from_entry

LABELS = {1001: {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "bench"},
          1002: {"k8s:app": "client", "k8s:io.kubernetes.pod.namespace": "bench"}}
IDS = {"10.9.0.2": 1001, "10.9.0.4": 1002}
PODS = {"10.9.0.2": ("bench", "web", {"app": "web"}), "10.9.0.4": ("bench", "client", {"app": "client"})}


def enricher() -> Enricher:
    return Enricher(identity_labels=LABELS.get, endpoint_by_ip=PODS.get, identity_by_ip=IDS.get,
                    service_by_ip_port=lambda ip, port: ("bench", "web") if (ip, port) == ("10.9.0.2", 80) else None,
                    node_name="n1")


def entry(i: int, code: int = 200, details: str = "via_upstream", duration: bool = True):
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.downstream_remote_address.socket_address.address = "10.9.0.4"
    c.downstream_remote_address.socket_address.port_value = 40000 + i
    c.downstream_local_address.socket_address.address = "10.9.0.2"
    c.downstream_local_address.socket_address.port_value = 80
    c.start_time.seconds, c.start_time.nanos = 1764140000 + i, 5000
    if duration:
        c.duration.nanos = 1_250_000 * (i + 1)
    c.custom_tags["ostium.direction"] = "ingress"
    e.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP11
    e.request.request_method = 2 if i % 2 else 1     # GET, POST
    e.request.authority, e.request.path = "web", f"/p{i}"
    e.response.response_code.value = code
    e.response.response_code_details = details
    return e


ENTRIES = [entry(0), entry(1), entry(2, 403, "rbac_access_denied_matched_policy[none]"),
           entry(3, 0, "upstream_reset_before_response_started", duration=False), entry(4, 503, "no_healthy_upstream")]


def test_lazy_records_count_and_read_back_like_eager_ones():
    eager, lazy = Observer(enricher=enricher()), Observer(enricher=enricher())
    for e in ENTRIES:
        assert eager.ingest_http_record(record_from_entry(e, "n1", "ingress:10.9.0.2:80")) is not None
        lazy.ingest_http_record(LazyL7Record(e, "n1", "ingress:10.9.0.2:80"))
    assert lazy.l7_counts == eager.l7_counts
    assert lazy.http_counts == eager.http_counts
    assert lazy.http_latency == eager.http_latency
    assert ("DROPPED", "L7_POLICY_DENIED", "INGRESS") in lazy.l7_counts
    (fe, _), (fl, _) = eager.query(), lazy.query()
    assert len(fl) == len(ENTRIES)
    for a, b in zip(fe, fl):
        da, db = dataclasses.asdict(a), dataclasses.asdict(b)
        da.pop("uuid"), db.pop("uuid")
        assert da == db
    assert fl[2].verdict.value == "DROPPED" and fl[0].destination.pod_name == "web"
    assert fl[0].destination_service is not None and fl[0].destination_service.name == "web"
    # Built once: a second read gives the same flow (same uuid).
    again, _ = lazy.query()
    assert [f.uuid for f in again] == [f.uuid for f in fl]


def test_lazy_record_answers_every_l7record_field():
    for e in ENTRIES:
        full = record_from_entry(e, "n1", "x")
        lazy = LazyL7Record(e, "n1", "x")
        for f in dataclasses.fields(full):
            assert getattr(lazy, f.name) == getattr(full, f.name), f.name
        assert lazy.to_dict() == full.to_dict()
