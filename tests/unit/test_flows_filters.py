"""Filters select exactly what they say: a table of (flags, the flows they must select)."""

from __future__ import annotations

import pytest

from mesh.errors import ValidationError
from mesh.flows.filters import parse_filters, parse_time
from mesh.flows.model import (
    HTTP, L7, Direction, Endpoint, Flow, FlowType, Kafka, L7Type, Verdict,
)

NOW = 1_800_000_000.0
XWING = Endpoint(ip="10.1.0.5", port=41000, identity=257, labels=("app=xwing", "org=alliance"),
                 namespace="default", pod_name="xwing-abc", workload="xwing")
TIE = Endpoint(ip="10.1.0.6", port=41001, identity=258, labels=("app=tiefighter", "org=empire"),
               namespace="empire", pod_name="tiefighter-1", workload="tiefighter")
DS = Endpoint(ip="10.1.0.9", port=80, identity=256, labels=("app=deathstar", "org=empire"),
              namespace="default", pod_name="deathstar-xyz", workload="deathstar")
KAFKA = Endpoint(ip="10.1.0.10", port=9092, identity=259, labels=("app=kafka",), namespace="default",
                 pod_name="kafka-0", workload="kafka")
WORLD = Endpoint(ip="192.0.2.1", port=5353, identity=2, labels=("reserved:world=",))


def http(method: str, path: str, code: int) -> L7:
    return L7(type=L7Type.RESPONSE, http=HTTP(method=method, url=f"http://ds{path}", protocol="HTTP/1.1",
                                              code=code))


FLOWS = {
    "xwing-syn-dropped": Flow(time=NOW - 600, verdict=Verdict.DROPPED, type=FlowType.DROP, source=XWING,
                              destination=DS, protocol="TCP", tcp_flags=("SYN",), drop_reason=11,
                              traffic_direction=Direction.INGRESS),
    "tie-trace": Flow(time=NOW - 300, verdict=Verdict.FORWARDED, type=FlowType.TRACE, source=TIE,
                      destination=DS, protocol="TCP", tcp_flags=("SYN",), traffic_direction=Direction.INGRESS),
    "tie-get-200": Flow(time=NOW - 200, verdict=Verdict.FORWARDED, type=FlowType.L7, source=TIE,
                        destination=DS, protocol="TCP", l7=http("POST", "/v1/request-landing", 200),
                        traffic_direction=Direction.INGRESS),
    "tie-put-403": Flow(time=NOW - 100, verdict=Verdict.DROPPED, type=FlowType.L7, source=TIE,
                        destination=DS, protocol="TCP", drop_reason=200,
                        l7=L7(type=L7Type.REQUEST, http=HTTP("PUT", "http://ds/v1/exhaust-port", "HTTP/1.1", 403)),
                        traffic_direction=Direction.INGRESS),
    "tie-get-503": Flow(time=NOW - 50, verdict=Verdict.FORWARDED, type=FlowType.L7, source=TIE,
                        destination=DS, protocol="TCP", l7=http("GET", "/health", 503),
                        traffic_direction=Direction.INGRESS),
    "kafka-produce-denied": Flow(time=NOW - 40, verdict=Verdict.DROPPED, type=FlowType.L7, source=XWING,
                                 destination=KAFKA, protocol="TCP", drop_reason=200,
                                 l7=L7(type=L7Type.REQUEST, kafka=Kafka("produce", 9, ("empire-announce",))),
                                 traffic_direction=Direction.EGRESS),
    "kafka-fetch": Flow(time=NOW - 30, verdict=Verdict.FORWARDED, type=FlowType.L7, source=TIE,
                        destination=KAFKA, protocol="TCP",
                        l7=L7(type=L7Type.REQUEST, kafka=Kafka("fetch", 13, ("deathstar-plans", "b"))),
                        traffic_direction=Direction.EGRESS),
    "world-udp": Flow(time=NOW - 10, verdict=Verdict.FORWARDED, type=FlowType.TRACE, source=WORLD,
                      destination=XWING, protocol="UDP", traffic_direction=Direction.INGRESS),
    "icmp-redirect": Flow(time=NOW - 5, verdict=Verdict.REDIRECTED, type=FlowType.TRACE, source=XWING,
                          destination=TIE, protocol="ICMPv4", icmp_type=8, traffic_direction=Direction.EGRESS),
}
ALL = set(FLOWS)

CASES = [
    ({}, ALL),
    ({"from-pod": "default/xwing"}, {"xwing-syn-dropped", "kafka-produce-denied", "icmp-redirect"}),
    ({"from-pod": "xwing"}, {"xwing-syn-dropped", "kafka-produce-denied", "icmp-redirect"}),
    ({"from-pod": "empire/xwing"}, set()),
    ({"to-pod": "kafka"}, {"kafka-produce-denied", "kafka-fetch"}),
    ({"pod": "default/xwing"}, {"xwing-syn-dropped", "kafka-produce-denied", "world-udp", "icmp-redirect"}),
    ({"from-pod": "xwing", "to-pod": "default/deathstar"}, {"xwing-syn-dropped"}),
    ({"from-label": "org=empire"}, {"tie-trace", "tie-get-200", "tie-put-403", "tie-get-503", "kafka-fetch"}),
    ({"to-label": "app=tiefighter"}, {"icmp-redirect"}),
    ({"label": "app=tiefighter"}, {"tie-trace", "tie-get-200", "tie-put-403", "tie-get-503", "kafka-fetch",
                                   "icmp-redirect"}),
    ({"from-label": "org=empire,app!=tiefighter"}, set()),
    ({"from-label": ["app=xwing", "reserved:world"]}, {"xwing-syn-dropped", "kafka-produce-denied",
                                                       "world-udp", "icmp-redirect"}),
    ({"from-label": "!org"}, {"world-udp"}),
    ({"from-identity": "world"}, {"world-udp"}),
    ({"to-identity": "256"}, {"xwing-syn-dropped", "tie-trace", "tie-get-200", "tie-put-403", "tie-get-503"}),
    ({"identity": ["259", "2"]}, {"kafka-produce-denied", "kafka-fetch", "world-udp"}),
    ({"namespace": "empire"}, {"tie-trace", "tie-get-200", "tie-put-403", "tie-get-503", "kafka-fetch",
                               "icmp-redirect"}),
    ({"to-namespace": "empire"}, {"icmp-redirect"}),
    ({"verdict": "DROPPED"}, {"xwing-syn-dropped", "tie-put-403", "kafka-produce-denied"}),
    ({"verdict": ["redirected", "dropped"], "type": "trace"}, {"icmp-redirect"}),
    ({"drop-reason": "POLICY_DENIED"}, {"xwing-syn-dropped"}),
    ({"drop-reason": "l7_policy_denied"}, {"tie-put-403", "kafka-produce-denied"}),
    ({"protocol": "tcp"}, {"xwing-syn-dropped", "tie-trace"}),
    ({"protocol": "udp"}, {"world-udp"}),
    ({"protocol": "icmp"}, {"icmp-redirect"}),
    ({"protocol": "http"}, {"tie-get-200", "tie-put-403", "tie-get-503"}),
    ({"protocol": "kafka"}, {"kafka-produce-denied", "kafka-fetch"}),
    ({"type": "l7"}, {"tie-get-200", "tie-put-403", "tie-get-503", "kafka-produce-denied", "kafka-fetch"}),
    ({"type": "drop"}, {"xwing-syn-dropped"}),
    ({"to-port": "9092"}, {"kafka-produce-denied", "kafka-fetch"}),
    ({"port": "5353"}, {"world-udp"}),
    ({"from-ip": "10.1.0.5"}, {"xwing-syn-dropped", "kafka-produce-denied", "icmp-redirect"}),
    ({"traffic-direction": "egress"}, {"kafka-produce-denied", "kafka-fetch", "icmp-redirect"}),
    ({"http-method": "put"}, {"tie-put-403"}),
    ({"http-method": ["GET", "POST"]}, {"tie-get-200", "tie-get-503"}),
    ({"http-path": r"^/v1/"}, {"tie-get-200", "tie-put-403"}),
    ({"http-path": r"exhaust"}, {"tie-put-403"}),
    ({"http-status": "200"}, {"tie-get-200"}),
    ({"http-status": "4+"}, {"tie-put-403"}),
    ({"http-status": ["4+", "5+"]}, {"tie-put-403", "tie-get-503"}),
    ({"http-status": "50+"}, {"tie-get-503"}),
    ({"kafka-topic": "deathstar-plans"}, {"kafka-fetch"}),
    ({"kafka-topic": "empire-announce", "verdict": "FORWARDED"}, set()),
    ({"since": "4m"}, {"tie-get-200", "tie-put-403", "tie-get-503", "kafka-produce-denied", "kafka-fetch", "world-udp",
                       "icmp-redirect"}),
    ({"since": "1m", "until": "20s"}, {"kafka-produce-denied", "kafka-fetch", "tie-get-503"}),
]


@pytest.mark.parametrize("flags,expected", CASES, ids=[str(c[0]) for c in CASES])
def test_filter_selects_exactly(flags, expected):
    flt = parse_filters(flags, now=NOW)
    assert {name for name, f in FLOWS.items() if flt.match(f)} == expected


BAD = [
    ({"http-status": "6x"}, "--http-status"),
    ({"http-status": "2000"}, "--http-status"),
    ({"http-path": "(unclosed"}, "--http-path"),
    ({"verdict": "ALLOWED"}, "--verdict"),
    ({"protocol": "quic"}, "--protocol"),
    ({"port": "70000"}, "--port"),
    ({"to-port": "http"}, "--to-port"),
    ({"from-identity": "mars"}, "--from-identity"),
    ({"from-label": "app=x y"}, "--from-label"),
    ({"from-label": "a,,b"}, "--from-label"),
    ({"from-pod": "a/b/c"}, "--from-pod"),
    ({"since": "yesterday"}, "--since"),
    ({"since": "1m", "until": "5m"}, "--since"),
    ({"last": "-3"}, "--last"),
    ({"type": "l3"}, "--type"),
    ({"drop-reason": "NOPE"}, "--drop-reason"),
    ({"ip": "10.0.0.300"}, "--ip"),
    ({"colour": "red"}, "--colour"),
]


@pytest.mark.parametrize("flags,flag", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_filter_names_the_flag(flags, flag):
    with pytest.raises(ValidationError) as exc:
        parse_filters(flags, now=NOW)
    assert exc.value.path == flag
    assert str(exc.value).startswith(flag + ": ")


def test_last_and_time_forms():
    assert parse_filters({"last": "20"}).last == 20
    assert parse_time("since", "2026-11-26T05:00:00Z") == parse_time("since", "2026-11-26T05:00:00+00:00")
    assert parse_time("since", "1h30m", now=10_000.0) == 10_000.0 - 5400
    assert parse_time("since", "500ms", now=10.0) == pytest.approx(9.5)
