"""Access log entries → L7 records (pure), and the receiver over real gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xdsserver.als import AccessLogReceiver, record_from_entry

pytestmark = pytest.mark.timeout(30)


def entry(code=403, details="rbac_access_denied_matched_policy[none]", grpc_status=None,
          method="POST", protocol=2):
    from envoy.data.accesslog.v3 import accesslog_pb2 as al
    e = al.HTTPAccessLogEntry(protocol_version=protocol)
    c = e.common_properties
    c.downstream_remote_address.socket_address.address = "10.0.0.7"
    c.downstream_remote_address.socket_address.port_value = 40000
    c.downstream_local_address.socket_address.address = "10.0.0.5"
    c.downstream_local_address.socket_address.port_value = 80
    c.start_time.seconds, c.start_time.nanos = 1_700_000_000, 500_000_000
    c.duration.nanos = 2_500_000
    c.upstream_cluster = "ostium-original-dst"
    c.route_name = "r"
    c.custom_tags["ostium.direction"] = "ingress"
    if code == 503:
        c.response_flags.no_healthy_upstream = True
    from envoy.config.core.v3 import base_pb2
    e.request.request_method = base_pb2.RequestMethod.Value(method)
    e.request.authority, e.request.path = "deathstar", "/v1/exhaust-port"
    e.request.request_headers["content-type"] = "application/grpc" if grpc_status is not None else "text/plain"
    e.response.response_code.value = code
    e.response.response_code_details = details
    if grpc_status is not None:
        e.response.response_trailers["grpc-status"] = str(grpc_status)
    return e


@pytest.mark.parametrize("kw,check", [
    ({}, lambda r: r.rbac_denied and r.response_code == 403 and r.method == "POST"),
    ({"code": 200, "details": "via_upstream"}, lambda r: not r.rbac_denied and r.response_code == 200),
    ({"code": 200, "details": "via_upstream", "grpc_status": 0}, lambda r: r.grpc_status == 0),
    ({"code": 503, "details": "no_healthy_upstream"}, lambda r: r.response_flags == ("no_healthy_upstream",)),
    ({"protocol": 3}, lambda r: r.protocol == "HTTP/2"),
])
def test_record_fields(kw, check):
    r = record_from_entry(entry(**kw), "node-1", "ingress:10.0.0.5:80")
    assert check(r), r
    assert (r.source, r.destination) == ("10.0.0.7:40000", "10.0.0.5:80")
    assert r.path == "/v1/exhaust-port" and r.authority == "deathstar"
    assert r.time == 1_700_000_000.5 and r.duration_ms == 2.5
    assert r.tags == {"ostium.direction": "ingress"} and r.log_name == "ingress:10.0.0.5:80"
    assert r.to_dict()["node_id"] == "node-1"


async def test_receiver_delivers_records_and_survives_callback_errors():
    from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

    got = []

    async def callback(rec):
        if rec.response_code == 500:
            raise RuntimeError("consumer bug")
        got.append(rec)

    receiver = AccessLogReceiver(callback)
    target = await receiver.start()
    try:
        async with grpc.aio.insecure_channel(target) as ch:
            first = als_pb2.StreamAccessLogsMessage()
            first.identifier.node.id = "node-1"
            first.identifier.log_name = "ingress:10.0.0.5:80"
            first.http_logs.log_entry.extend([entry(), entry(code=500, details="x")])
            second = als_pb2.StreamAccessLogsMessage()
            second.http_logs.log_entry.append(entry(code=200, details="via_upstream"))

            async def messages():
                yield first
                yield second

            await asyncio.wait_for(als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(messages()), 5)
        assert [r.response_code for r in got] == [403, 200]
        assert all(r.node_id == "node-1" and r.log_name == "ingress:10.0.0.5:80" for r in got)
        assert receiver.received == 3 and receiver.errors == 1
    finally:
        await receiver.stop()
