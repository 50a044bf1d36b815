"""The observer ring: bounded, overwrites the oldest and counts them; followers never slow ingest."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bpf.maps import Direction as BpfDirection, Event, EventType, Reason, Verdict as BpfVerdict
from mesh.flows.filters import parse_filters
from mesh.flows.model import Enricher, FlowType, Verdict
from mesh.flows.observer import JsonlExporter, LostEvents, Observer

IDENTITIES = {256: {"app": "deathstar"}, 257: {"app": "xwing"}}


def enricher() -> Enricher:
    return Enricher(identity_labels=IDENTITIES.get,
                    endpoint_by_ip={"10.1.0.5": ("default", "xwing", {"app": "xwing"}),
                                    "10.1.0.9": ("default", "deathstar-1", {"app": "deathstar"})}.get)


def event(i: int, drop: bool = False) -> Event:
    return Event(ts_ns=time.monotonic_ns(), type=EventType.DROP if drop else EventType.TRACE,
                 reason=Reason.POLICY_DENY if drop else Reason.NEW_FLOW, direction=BpfDirection.INGRESS,
                 proto=6, ep_id=12, proxy_port=0, src_identity=257, dst_identity=256, saddr="10.1.0.5",
                 daddr="10.1.0.9", sport=40000 + i, dport=80, ifindex=7,
                 verdict=BpfVerdict.DROPPED if drop else BpfVerdict.FORWARDED, tcp_flags=0x02, length=60)


def test_raw_and_decoded_events_give_the_same_flow():
    obs = Observer(capacity=8, enricher=enricher())
    ev = event(1, drop=True)
    obs.ingest_datapath_raw(ev.pack())
    obs.ingest_datapath_event(ev)
    (a, b), _ = obs.query()
    ja, jb = a.to_json(), b.to_json()
    ja.pop("uuid"), jb.pop("uuid")
    assert ja == jb
    assert a.source.pod_name == "xwing" and a.destination.labels == ("app=deathstar",)
    assert a.source.port == 40001 and a.destination.port == 80
    assert a.destination.endpoint_id == 12         # ingress: the endpoint is the destination
    assert abs(a.time - time.time()) < 5
    assert obs.dp_counts == {(2, 3, 10, 0): 2}


def test_full_ring_overwrites_oldest_and_counts_lost():
    obs = Observer(capacity=5)
    for i in range(12):
        obs.ingest_datapath_raw(event(i).pack())
    assert (obs.seen, obs.stored, obs.lost) == (12, 5, 7)
    flows, incomplete = obs.query()
    assert [f.source.port for f in flows] == [40007, 40008, 40009, 40010, 40011]
    assert incomplete                                   # the answer may miss overwritten flows
    last2, incomplete2 = obs.query(last=2)
    assert [f.source.port for f in last2] == [40010, 40011] and not incomplete2
    assert obs.status()["lost"] == 7
    # uuids are stable across reads
    assert [f.uuid for f in obs.query()[0]] == [f.uuid for f in obs.query()[0]]


def test_query_with_filter_and_last():
    obs = Observer(capacity=100, enricher=enricher())
    for i in range(30):
        obs.ingest_datapath_raw(event(i, drop=i % 3 == 0).pack())
    flt = parse_filters({"verdict": "DROPPED", "from-label": "app=xwing"})
    flows, _ = obs.query(flt.match, last=4)
    assert [f.source.port for f in flows] == [40018, 40021, 40024, 40027]
    assert all(f.type is FlowType.DROP for f in flows)


def test_slow_subscriber_never_blocks_ingest_and_counts_its_losses():
    obs = Observer(capacity=1000)
    raw = event(1).pack()
    n = 20_000
    t0 = time.process_time()
    for _ in range(n):
        obs.ingest_datapath_raw(raw)
    alone = time.process_time() - t0
    sub = obs.subscribe(queue_size=100)               # never read
    t0 = time.process_time()
    for _ in range(n):
        obs.ingest_datapath_raw(raw)
    with_sub = time.process_time() - t0
    assert sub.lost == n - 100 and len(sub.queue) == 100
    # ingest does not wait for the follower; its per-event cost stays the same order
    assert with_sub < alone * 3 + 0.05
    items = sub.pop_ready()
    assert items[0] == LostEvents(n - 100) and len(items) == 101
    obs.unsubscribe(sub)
    assert obs.status()["subscriber_lost"] == n - 100 and obs.subscribers == 0


async def test_follow_gets_history_then_live_and_lost_markers():
    obs = Observer(capacity=100, enricher=enricher())
    for i in range(5):
        obs.ingest_datapath_raw(event(i).pack())
    got: list = []
    flt = parse_filters({"from-pod": "xwing"})

    async def follower():
        async for item in obs.follow(flt.match, last=2, queue_size=3):
            got.append(item)
            if len(got) == 2:
                # stall while 10 flows arrive: 3 fit in the queue, 7 are lost for us
                while obs.seen < 15:
                    await asyncio.sleep(0.001)
            if len(got) >= 6:
                return

    task = asyncio.create_task(follower())
    while obs.subscribers == 0:
        await asyncio.sleep(0.001)
    while len(got) < 2:
        await asyncio.sleep(0.001)
    for i in range(5, 15):
        obs.ingest_datapath_raw(event(i).pack())
    await asyncio.wait_for(task, 5)
    assert [f.source.port for f in got[:2]] == [40003, 40004]
    assert got[2] == LostEvents(7)
    assert [f.source.port for f in got[3:6]] == [40005, 40006, 40007]
    assert obs.subscribers == 0


def test_l7_flows_counted_and_stored():
    from tests.unit.test_flows_model import KafkaRec, http_record, enricher as full_enricher
    obs = Observer(capacity=10, enricher=full_enricher())
    obs.ingest_http_record(http_record())
    obs.ingest_http_record(http_record(method="PUT", response_code=403, rbac_denied=True))
    obs.ingest_kafka_record(KafkaRec())
    flows, _ = obs.query()
    assert [f.verdict for f in flows] == [Verdict.FORWARDED, Verdict.DROPPED, Verdict.DROPPED]
    assert obs.http_counts == {("POST", 200, "default/xwing", "default/deathstar", "FORWARDED"): 1,
                               ("PUT", 403, "default/xwing", "default/deathstar", "DROPPED"): 1}
    assert obs.kafka_counts == {("produce", "empire-announce", "DROPPED"): 1}


def test_exporter_writes_json_lines_and_rotates(tmp_path):
    path = tmp_path / "flows.jsonl"
    exp = JsonlExporter(str(path), max_bytes=4000)
    obs = Observer(capacity=10, exporter=exp)
    for i in range(40):
        obs.ingest_datapath_raw(event(i).pack())
        if i % 5 == 4:
            obs.flush_export()
    exp.close()
    assert exp.written == 40
    lines = path.read_text().splitlines()
    rotated = (tmp_path / "flows.jsonl.1").read_text().splitlines()
    assert path.stat().st_size <= 4000 and lines and rotated
    ports = [json.loads(x)["l4"]["TCP"]["source_port"] for x in rotated + lines]
    assert ports == sorted(ports) and ports[-1] == 40039


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        Observer(capacity=0)


def test_side_prefilter_gives_the_same_answer_as_the_full_filter():
    obs = Observer(capacity=200, enricher=enricher())
    for i in range(150):
        obs.ingest_datapath_raw(event(i, drop=i % 4 == 0).pack())
    obs.ingest_datapath_raw(Event(**{**_fields(event(999)), "saddr": "10.9.9.9", "src_identity": 300}).pack())
    for flags in ({"from-label": "app=xwing", "verdict": "DROPPED"}, {"from-pod": "xwing"},
                  {"to-label": "app=xwing"}, {"from-identity": "300"}):
        flt = parse_filters(flags)
        slow, _ = obs.query(flt.match)
        fast, _ = obs.query(flt.match, sides=flt.sides_may_match)
        assert [f.uuid for f in slow] == [f.uuid for f in fast]
    assert len(obs.query(parse_filters({"from-identity": "300"}).match)[0]) == 1


def _fields(ev: Event) -> dict:
    import dataclasses
    return {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}


async def test_async_query_yields_and_skips_slots_overwritten_meanwhile():
    obs = Observer(capacity=100)
    for i in range(100):
        obs.ingest_datapath_raw(event(i).pack())
    task = asyncio.create_task(obs.query_async(chunk=10))
    await asyncio.sleep(0)          # the scan has done one chunk (the newest 10)
    for i in range(100, 150):       # overwrite the oldest half while it waits
        obs.ingest_datapath_raw(event(i).pack())
    flows, incomplete = await task
    ports = [f.source.port - 40000 for f in flows]
    assert ports == sorted(ports) and len(set(ports)) == len(ports)
    assert ports[-10:] == list(range(90, 100))      # what it had when it started, newest first
    assert all(p >= 50 for p in ports) and incomplete


PREFILTER_CASES = [
    {"verdict": "DROPPED"}, {"verdict": ["FORWARDED", "REDIRECTED"]}, {"type": "drop"}, {"type": "trace"},
    {"type": "l7"}, {"drop-reason": "POLICY_DENIED"}, {"drop-reason": "11"}, {"protocol": "udp"},
    {"protocol": ["icmp", "tcp"]}, {"protocol": "http"}, {"traffic-direction": "egress"}, {"to-port": "22"},
    {"from-port": "5353"}, {"port": ["80", "53"]}, {"port": "8"}, {"from-ip": "10.200.0.11"},
    {"ip": "10.200.0.10"}, {"to-ip": "10.200.0.10", "verdict": "DROPPED"}, {"http-status": "4+"},
    {"kafka-topic": "empire-announce"}, {"from-label": "app=xwing", "to-port": "80"},
    {"verdict": "DROPPED", "from-pod": "default/xwing", "protocol": "tcp"},
]


@pytest.mark.parametrize("flags", PREFILTER_CASES, ids=[str(c) for c in PREFILTER_CASES])
def test_prefilters_never_change_the_answer(flags):
    from mesh.flows import synthetic
    obs = Observer(capacity=500, enricher=synthetic.enricher())
    synthetic.star_wars(obs, 3)
    obs.ingest_datapath_raw(synthetic.raw_event(257, 258, 8, proto=1, flags=0))            # ICMP type 8
    obs.ingest_datapath_raw(synthetic.raw_event(257, 2, 443, ingress=False, sport=80))      # egress
    obs.ingest_datapath_raw(synthetic.raw_event(257, 256, 80, drop=True, reason=10))        # deny rule
    obs.ingest_datapath_event(Event.unpack(synthetic.raw_event(258, 256, 22, drop=True)))  # decoded path
    flt = parse_filters(flags)
    plain, _ = obs.query(flt.match)
    fast, _ = obs.query(flt)
    assert [f.uuid for f in plain] == [f.uuid for f in fast]
