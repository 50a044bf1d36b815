"""The flow observer: one bounded ring of flows from every source, live subscribers, counters.

Ingest is O(1) and cheap because datapath events (the bulk: one per new flow and per drop) are kept
as compact slots: the raw ring-buffer record (or the decoded event object) plus two references to
shared, cached enrichment results. A Flow object is built only when someone reads the slot (a
query, a follower, the exporter). L7 records (Envoy, Kafka proxy) arrive far less often and are
stored as Flow objects built by the converters in model.py.

Not thread-safe: call the ingest methods from the agent's event loop thread.

Subscribers (live followers) each have a bounded queue. Ingest never waits for them: when a
follower's queue is full the flow is not queued for it and its lost count grows; the follower
receives a LostEvents marker with that count before its next flow.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import json
import os
import socket
import struct
import time
import uuid as uuidlib
from collections.abc import Mapping as _Mapping
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from mesh.flows.model import (
    DROP_REASONS, L7_DENIED, L7_ERROR, Direction, Endpoint, EndpointMeta, Enricher, Flow, FlowType, PROTO_NAMES,
    Verdict, endpoint_of, flow_from_http_record, flow_from_kafka_record, tcp_flag_names,
)

# struct trace_event (bpf/lib/events.h, 48 bytes). Ports are big-endian on the wire; they are
# swapped only when a slot is materialised.
_RAW = struct.Struct("<QBBBBHHII4s4sHHIBBHI")
RAW_EVENT_SIZE = _RAW.size
_VERDICTS = {1: Verdict.FORWARDED, 2: Verdict.REDIRECTED, 3: Verdict.DROPPED}
_DIRECTIONS = {0: Direction.INGRESS, 1: Direction.EGRESS}

DEFAULT_CAPACITY = 65536
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_SUBSCRIBER_QUEUE = 8192
_ENRICH_CACHE_MAX = 65536


def _swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


@dataclass(frozen=True, slots=True)
class LostEvents:
    """In-band marker for a follower: `count` flows were not delivered to it (queue overflow)."""

    count: int

    def to_json(self) -> dict[str, Any]:
        return {"lost_events": self.count}


class Subscription:
    """One live follower's bounded queue. The observer pushes; the follower awaits `next()`."""

    __slots__ = ("queue", "capacity", "lost", "_unreported", "_wake", "closed")

    def __init__(self, capacity: int) -> None:
        self.queue: collections.deque = collections.deque()
        self.capacity = capacity
        self.lost = 0              # total flows this follower did not get
        self._unreported = 0       # lost since the last LostEvents handed out
        self._wake = asyncio.Event()
        self.closed = False

    def push(self, slot: tuple) -> None:
        if len(self.queue) >= self.capacity:
            self.lost += 1
            self._unreported += 1
            return
        self.queue.append(slot)
        self._wake.set()

    def pop_ready(self) -> "list[tuple | LostEvents]":
        """What is queued now (a LostEvents first if flows were lost), without waiting."""
        out: list[tuple | LostEvents] = []
        if self._unreported:
            out.append(LostEvents(self._unreported))
            self._unreported = 0
        q = self.queue
        while q:
            out.append(q.popleft())
        return out

    async def wait(self, timeout: float | None = None) -> bool:
        """Until something is queued (True) or `timeout` seconds pass idle (False)."""
        while not self.queue and not self._unreported and not self.closed:
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    return False
        return True


class JsonlExporter:
    """Appends flows as JSON lines to a file; at `max_bytes` the file is rotated to `path.1` (one
    backup kept), so the disk use stays under 2 × max_bytes."""

    def __init__(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        self._size = self._f.tell()

    def write(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self._f.close()
            os.replace(self.path, self.path + ".1")
            self._f = open(self.path, "a", encoding="utf-8")
            self._size = 0
        self._f.write(data)
        self._f.flush()
        self._size += len(data)
        self.written += len(records)

    def close(self) -> None:
        self._f.close()


class Observer:
    """A ring of the last `capacity` flows; counters for metrics; live subscribers."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, enricher: Enricher | None = None,
                 subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE, exporter: JsonlExporter | None = None
                 ) -> None:
        if capacity < 1:
            raise ValueError("flow ring capacity must be at least 1")
        self.capacity = capacity
        self.enricher = enricher or Enricher()
        self.subscriber_queue = subscriber_queue
        self.exporter = exporter
        self._ring: list[tuple | None] = [None] * capacity
        self.seen = 0                               # flows ever ingested; next sequence number
        self._subs: list[Subscription] = []
        self._meta_cache: dict[tuple[Any, int], EndpointMeta] = {}
        self._svc_cache: dict[tuple[str, int], Any] = {}    # (ip, port) -> Service | None
        self._export_pending: list[tuple] = []
        # Stable per-flow UUIDs for slots: a random per-observer prefix + the sequence number.
        u = str(uuidlib.uuid4())
        self._uuid_prefix = u[:24]
        self.resync_clock()
        # Counters for metrics (read at scrape time; plain dicts keep ingest cheap).
        self.dp_counts: dict[tuple[int, int, int, int], int] = {}     # (type, verdict, reason, dir)
        self.l7_counts: dict[tuple[str, str, str], int] = {}          # (verdict, reason desc, dir)
        self.http_counts: dict[tuple[str, int, str, str, str], int] = {}  # method, code, src, dst, verdict
        self.kafka_counts: dict[tuple[str, str, str], int] = {}       # api, topic, verdict
        # HTTP latency per (method, destination workload): [count per LATENCY_BUCKETS slot..., +Inf], sum
        self.http_latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.subscriber_lost_total = 0

    # ---- clock and enrichment ----
    def resync_clock(self) -> None:
        """Datapath stamps are CLOCK_MONOTONIC: keep the offset to the wall clock."""
        self._mono_to_wall = time.time() - time.monotonic()

    def invalidate_enrichment(self) -> None:
        """Forget cached endpoint/identity lookups: call after endpoints or identities change."""
        self._meta_cache.clear()
        self._svc_cache.clear()

    def _meta(self, ip: Any, identity: int) -> EndpointMeta:
        key = (ip, identity)
        meta = self._meta_cache.get(key)
        if meta is None:
            if len(self._meta_cache) >= _ENRICH_CACHE_MAX:
                self._meta_cache.clear()
            ip_str = ip if isinstance(ip, str) else socket.inet_ntoa(ip)
            meta = self._meta_cache[key] = self.enricher.peer(ip_str, identity)
        return meta

    # ---- ingest ----
    @property
    def lost(self) -> int:
        """Flows overwritten in the ring (the oldest go first)."""
        return self.seen - self.capacity if self.seen > self.capacity else 0

    @property
    def stored(self) -> int:
        return min(self.seen, self.capacity)

    def _store(self, slot: tuple) -> None:
        self._ring[slot[0] % self.capacity] = slot
        self.seen = slot[0] + 1
        for sub in self._subs:
            sub.push(slot)
        if self.exporter is not None:
            self._export_pending.append(slot)

    def ingest_datapath_raw(self, raw: bytes) -> None:
        """One ring-buffer record (struct trace_event bytes), as read from the BPF ring buffer."""
        (ts, ty, reason, d, _proto, _ep, _pp, si, di, sa, da, _sp, _dp, _ifi, verdict, _fl, _pad,
         _ln) = _RAW.unpack_from(raw)
        key = (ty, verdict, reason, d)
        c = self.dp_counts
        c[key] = c.get(key, 0) + 1
        cache = self._meta_cache
        sm = cache.get((sa, si)) or self._meta(sa, si)
        dm = cache.get((da, di)) or self._meta(da, di)
        seq = self.seen
        slot = (seq, ts / 1e9 + self._mono_to_wall, raw, sm, dm)
        self._ring[seq % self.capacity] = slot
        self.seen = seq + 1
        if self._subs:
            for sub in self._subs:
                sub.push(slot)
        if self.exporter is not None:
            self._export_pending.append(slot)

    def ingest_datapath_event(self, ev: Any) -> None:
        """A decoded datapath event (bpf.maps.Event or anything with its attribute names)."""
        ty, verdict, reason, d = int(ev.type), int(ev.verdict), int(ev.reason), int(ev.direction)
        key = (ty, verdict, reason, d)
        self.dp_counts[key] = self.dp_counts.get(key, 0) + 1
        sm = self._meta(ev.saddr, ev.src_identity)
        dm = self._meta(ev.daddr, ev.dst_identity)
        self._store((self.seen, ev.ts_ns / 1e9 + self._mono_to_wall, ev, sm, dm))

    def ingest_flow(self, flow: Flow) -> None:
        """A Flow built by a converter (L7 sources, or tests)."""
        if flow.type is FlowType.L7 or flow.l7 is not None:
            self._count_l7(flow)
        else:
            key = (2 if flow.type is FlowType.DROP else 1,
                   {Verdict.FORWARDED: 1, Verdict.REDIRECTED: 2, Verdict.DROPPED: 3}.get(flow.verdict, 0),
                   flow.drop_reason, 0 if flow.traffic_direction is Direction.INGRESS else 1)
            self.dp_counts[key] = self.dp_counts.get(key, 0) + 1
        self._store((self.seen, flow.time, flow, None, None))

    def ingest_http_record(self, rec: Any) -> Flow | None:
        """One Envoy access-log record: an xdsserver.als.LazyL7Record (what the agent gets), an L7Record,
        or a mapping with its fields. Runs once per proxied request, so the enrichment of both sides and
        the destination's service come from the observer's caches (cleared by invalidate_enrichment and
        every enrichment_ttl). A lazy record is counted and stored as it is; its Flow is built when the
        slot is read (returns None then), like datapath events."""
        if isinstance(rec, _Mapping):
            flow = flow_from_http_record(rec, self.enricher)
            self._count_l7(flow)
            self._store((self.seen, flow.time, flow, None, None))
            return flow
        sip, dip, dport = rec.source_ip, rec.destination_ip, rec.destination_port
        cache = self._meta_cache
        sm = cache.get((sip, 0)) or self._meta(sip, 0)
        dm = cache.get((dip, 0)) or self._meta(dip, 0)
        skey = (dip, dport)
        svc = self._svc_cache.get(skey, False)
        if svc is False:
            if len(self._svc_cache) >= _ENRICH_CACHE_MAX:
                self._svc_cache.clear()
            svc = self._svc_cache[skey] = self.enricher.service(dip, dport)
        if hasattr(rec, "full"):
            self._count_l7_lazy(rec, sm, dm)
            self._store((self.seen, rec.time, _L7Slot(rec, sm, dm, svc), None, None))
            return None
        flow = flow_from_http_record(rec, self.enricher, metas=(sm, dm), destination_service=svc,
                                     uuid=f"{self._uuid_prefix}{self.seen:012x}")
        self._count_l7(flow)
        self._store((self.seen, flow.time, flow, None, None))
        return flow

    def _count_l7_lazy(self, rec: Any, sm: EndpointMeta, dm: EndpointMeta) -> None:
        """_count_l7 for a lazy record, from the fields it read up front (same keys, same values)."""
        code = rec.response_code or 0
        if rec.rbac_denied:
            v, desc = "DROPPED", _L7_DENIED_DESC
        elif code == 0:
            v, desc = "ERROR", _L7_ERROR_DESC
        else:
            v, desc = "FORWARDED", ""
        d = rec.tags.get("ostium.direction") if rec.tags else None
        direction = (Direction.INGRESS if d.upper() == "INGRESS" else Direction.EGRESS if d.upper() == "EGRESS"
                     else Direction.UNKNOWN) if d else Direction.UNKNOWN
        key = (v, desc, direction.value)
        self.l7_counts[key] = self.l7_counts.get(key, 0) + 1
        self._count_http(rec.method or "", code, _side_name(sm, rec.source_ip), _side_name(dm, rec.destination_ip),
                         v, int((rec.duration_ms or 0.0) * 1e6))

    def _count_http(self, method: str, code: int, src: str, dst: str, verdict: str, latency_ns: int) -> None:
        hk = (method, code, src, dst, verdict)
        self.http_counts[hk] = self.http_counts.get(hk, 0) + 1
        if code:   # a request with a response: its latency means something
            lk = (method, dst)
            h = self.http_latency.get(lk)
            if h is None:
                h = self.http_latency[lk] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
            secs = latency_ns / 1e9
            h[0][bisect.bisect_left(LATENCY_BUCKETS, secs)] += 1
            h[1][0] += secs

    def ingest_kafka_record(self, rec: Any) -> Flow:
        flow = flow_from_kafka_record(rec, self.enricher)
        self.ingest_flow(flow)
        return flow

    def _count_l7(self, flow: Flow) -> None:
        v = flow.verdict.value
        key = (v, flow.drop_reason_desc, flow.traffic_direction.value)
        self.l7_counts[key] = self.l7_counts.get(key, 0) + 1
        l7 = flow.l7
        if l7 is None:
            return
        if l7.http is not None:
            self._count_http(l7.http.method, l7.http.code, workload_or_ip(flow.source),
                             workload_or_ip(flow.destination), v, l7.latency_ns)
        elif l7.kafka is not None:
            for topic in l7.kafka.topics or ("",):
                kk = (l7.kafka.api_key, topic, v)
                self.kafka_counts[kk] = self.kafka_counts.get(kk, 0) + 1

    # ---- reading ----
    def materialize(self, slot: tuple) -> Flow:
        seq, wall, obj, sm, dm = slot
        if isinstance(obj, Flow):
            return obj
        if type(obj) is _L7Slot:
            flow = obj.flow
            if flow is None:
                flow = obj.flow = flow_from_http_record(
                    obj.rec.full(), self.enricher, metas=(obj.sm, obj.dm), destination_service=obj.svc,
                    uuid=f"{self._uuid_prefix}{seq:012x}")
            return flow
        if isinstance(obj, (bytes, bytearray, memoryview)):
            (_ts, ty, reason, d, proto, ep, pp, _si, _di, sa, da, sp, dp, _ifi, verdict, flags, _pad,
             _ln) = _RAW.unpack_from(obj)
            saddr, daddr, sport, dport = socket.inet_ntoa(sa), socket.inet_ntoa(da), _swap16(sp), _swap16(dp)
        else:
            ty, reason, d, proto = int(obj.type), int(obj.reason), int(obj.direction), int(obj.proto)
            ep, pp, verdict, flags = obj.ep_id, obj.proxy_port, int(obj.verdict), obj.tcp_flags
            saddr, daddr, sport, dport = obj.saddr, obj.daddr, obj.sport, obj.dport
        v = _VERDICTS.get(verdict, Verdict.ERROR)
        direction = _DIRECTIONS.get(d, Direction.UNKNOWN)
        icmp = proto == 1
        # The endpoint id names the endpoint whose veth saw the packet: the destination on
        # ingress, the source on egress.
        ingress = d == 0
        src = endpoint_of(sm, saddr, 0 if icmp else sport, 0 if ingress else ep)
        dst = endpoint_of(dm, daddr, 0 if icmp else dport, ep if ingress else 0)
        enr = self.enricher
        return Flow(
            time=wall, verdict=v,
            type=FlowType.DROP if ty == 2 or v is Verdict.DROPPED else FlowType.TRACE,
            source=src, destination=dst,
            protocol=PROTO_NAMES.get(proto, str(proto)),
            tcp_flags=tcp_flag_names(flags) if proto == 6 else (),
            icmp_type=dport if icmp else None,
            drop_reason=reason if v is Verdict.DROPPED else 0,
            traffic_direction=direction, is_reply=reason == 2,
            source_service=enr.service(saddr, sport), destination_service=enr.service(daddr, dport),
            node_name=enr.node_name, proxy_port=pp,
            uuid=f"{self._uuid_prefix}{seq:012x}",
        )

    def query(self, match: Callable[[Flow], bool] | None = None, last: int | None = None,
              since: float | None = None, until: float | None = None,
              sides: Callable[[Any, Any], bool] | None = None,
              records: Callable[[tuple], bool] | None = None) -> tuple[list[Flow], bool]:
        """Flows (oldest first) that pass `match` within [since, until]; the newest `last` of them.

        `sides(src_meta, dst_meta)`: an optional necessary condition checked on a datapath slot's
        enrichment before its Flow is built (FlowFilter.sides_may_match); `records(raw tuple)` one
        on its raw record (compile_record_criteria(FlowFilter.record_criteria)).
        A FlowFilter can be passed as `match`: its prefilters are then used automatically.
        Returns (flows, incomplete): incomplete is True when the ring has overwritten flows that
        could have belonged to the answer (the scan reached the oldest stored flow)."""
        state = _Scan(self, *_prefilters(match, sides, records), last, since, until)
        state.run(None)
        return state.result()

    async def query_async(self, match: Callable[[Flow], bool] | None = None, last: int | None = None,
                          since: float | None = None, until: float | None = None,
                          sides: Callable[[Any, Any], bool] | None = None,
                          records: Callable[[tuple], bool] | None = None,
                          chunk: int = 4096) -> tuple[list[Flow], bool]:
        """query() that yields to the event loop every `chunk` slots, so a scan of a full ring
        never holds up ingest or other clients. Slots overwritten meanwhile are skipped."""
        state = _Scan(self, *_prefilters(match, sides, records), last, since, until)
        while not state.run(chunk):
            await asyncio.sleep(0)
        return state.result()

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        sub = Subscription(queue_size or self.subscriber_queue)
        self._subs = self._subs + [sub]   # copy-on-write: ingest iterates without a lock
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        sub._wake.set()
        self.subscriber_lost_total += sub.lost
        self._subs = [s for s in self._subs if s is not sub]

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def follow(self, match: Callable[[Flow], bool] | None = None, last: int = 0,
                     since: float | None = None, queue_size: int | None = None,
                     heartbeat: float | None = None) -> AsyncIterator[Flow | LostEvents | None]:
        """History (the newest `last` matching flows, or since a time) then live flows.

        With `heartbeat`, yields None after that many idle seconds, so a server can notice a
        client that went away while nothing was flowing."""
        sub = self.subscribe(queue_size)
        try:
            first_live = self.seen
            if last or since is not None:
                history, _ = await self.query_async(match, last=last or None, since=since)
                for flow in history:
                    yield flow
            while not sub.closed:
                if not await sub.wait(heartbeat):
                    yield None
                    continue
                for item in sub.pop_ready():
                    if isinstance(item, LostEvents):
                        yield item
                        continue
                    if item[0] < first_live:
                        continue
                    flow = self.materialize(item)
                    if match is None or match(flow):
                        yield flow
        finally:
            self.unsubscribe(sub)

    def status(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "stored": self.stored, "seen": self.seen, "lost": self.lost,
                "subscribers": self.subscribers,
                "subscriber_lost": self.subscriber_lost_total + sum(s.lost for s in self._subs)}

    # ---- export ----
    def flush_export(self) -> int:
        if self.exporter is None or not self._export_pending:
            return 0
        pending, self._export_pending = self._export_pending, []
        self.exporter.write([self.materialize(s).to_json() for s in pending])
        return len(pending)

    async def run(self, export_interval: float = 0.5, enrichment_ttl: float = 10.0) -> None:
        """Background duties: export flushes, clock resync, and forgetting cached enrichment every
        `enrichment_ttl` seconds (so label/endpoint changes show up even if nobody calls
        invalidate_enrichment). Run as a task in the agent."""
        last_clear = last_sync = time.monotonic()
        while True:
            await asyncio.sleep(export_interval)
            try:
                self.flush_export()
            except OSError as exc:   # a full disk must not stop the observer; say so once per batch
                import logging
                logging.getLogger("ostium.flows").warning("flow export failed", extra={"error": str(exc)})
            now = time.monotonic()
            if now - last_clear >= enrichment_ttl:
                self._meta_cache.clear()
                self._svc_cache.clear()
                last_clear = now
            if now - last_sync >= 60:
                self.resync_clock()
                last_sync = now


async def pump_datapath_events(observer: Observer, events: AsyncIterator[Any]) -> None:
    """Feed decoded datapath events (Datapath.events() / an EventHub) into the observer."""
    async for ev in events:
        observer.ingest_datapath_event(ev)


def _prefilters(match: Any, sides: Any, records: Any) -> tuple[Any, Any, Any]:
    """(match, sides, records): a FlowFilter-like `match` brings its own prefilters."""
    if hasattr(match, "sides_may_match") and hasattr(match, "record_criteria"):
        if sides is None and match.side_predicates:
            sides = match.sides_may_match
        if records is None:
            records = compile_record_criteria(match.record_criteria)
        match = match.match
    return match, sides, records


_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "ICMPv4": 1, "SCTP": 132}
_VERDICT_CODES = {"FORWARDED": 1, "REDIRECTED": 2, "DROPPED": 3}


def compile_record_criteria(criteria: tuple[tuple[str, frozenset], ...]) -> Callable[[tuple], bool] | None:
    """FlowFilter.record_criteria → a check on an unpacked struct trace_event (the _RAW layout:
    1 type, 2 reason, 3 direction, 4 proto, 9 saddr, 10 daddr, 11 sport, 12 dport (as read:
    byte-swapped), 14 verdict), True when the record may match."""
    if not criteria:
        return None
    checks: list[Callable[[tuple], bool]] = []
    for field, allowed in criteria:
        if field == "verdict":
            codes = frozenset(_VERDICT_CODES[v] for v in allowed if v in _VERDICT_CODES)
            checks.append(lambda r, c=codes: r[14] in c)
        elif field == "type":
            want_drop, want_trace = "drop" in allowed, "trace" in allowed
            checks.append(lambda r, d=want_drop, t=want_trace: (d if (r[1] == 2 or r[14] == 3) else t))
        elif field == "drop_reason":
            checks.append(lambda r, c=allowed: r[14] == 3 and r[2] in c)
        elif field == "protocol":
            nums = frozenset(_PROTO_NUMBERS[p] for p in allowed if p in _PROTO_NUMBERS)
            checks.append(lambda r, c=nums: r[4] in c)
        elif field == "direction":
            dirs = frozenset({"INGRESS": 0, "EGRESS": 1}[d] for d in allowed)
            checks.append(lambda r, c=dirs: r[3] in c)
        elif field.endswith("_port"):
            raw = frozenset(_swap16(p) for p in allowed)
            idx = {"src_port": (11,), "dst_port": (12,), "any_port": (11, 12)}[field]
            checks.append(lambda r, c=raw, i=idx: r[4] != 1 and any(r[j] in c for j in i))
        elif field.endswith("_ip"):
            raw = frozenset(socket.inet_aton(ip) for ip in allowed if ":" not in ip)
            idx = {"src_ip": (9,), "dst_ip": (10,), "any_ip": (9, 10)}[field]
            checks.append(lambda r, c=raw, i=idx: any(r[j] in c for j in i))

    def check(r: tuple) -> bool:
        for c in checks:
            if not c(r):
                return False
        return True

    return check


class _Scan:
    """A newest-first scan of the ring that can stop and resume (for query_async)."""

    def __init__(self, obs: Observer, match, sides, records, last, since, until) -> None:
        self.obs, self.match, self.last, self.since, self.until = obs, match, last, since, until
        self.sides, self.records = sides, records
        self.seq = obs.seen - 1
        self.out: list[Flow] = []
        self.reached_oldest = True

    def run(self, budget: int | None) -> bool:
        """Scan up to `budget` slots (all if None); True when finished."""
        obs, out, match, sides = self.obs, self.out, self.match, self.sides
        since, until, last = self.since, self.until, self.last
        ring, cap = obs._ring, obs.capacity
        n = 0
        while self.seq >= 0 and self.seq > obs.seen - 1 - cap:
            seq = self.seq
            self.seq -= 1
            slot = ring[seq % cap]
            if slot is None or slot[0] != seq:   # overwritten while we yielded
                continue
            n += 1
            wall = slot[1]
            # Slots are in arrival order but L7 records can be stamped a little earlier than
            # later datapath events: check every slot, no early stop on time.
            if (until is not None and wall > until) or (since is not None and wall < since):
                continue
            if sides is not None and slot[3] is not None and not sides(slot[3], slot[4]):
                continue
            if self.records is not None and slot[3] is not None and type(slot[2]) is bytes \
                    and not self.records(_RAW.unpack_from(slot[2])):
                continue
            flow = obs.materialize(slot)
            if match is None or match(flow):
                out.append(flow)
                if last is not None and len(out) >= last:
                    self.reached_oldest = False
                    self.seq = -1
                    return True
            if budget is not None and n >= budget:
                return self.seq < 0 or self.seq <= obs.seen - 1 - cap
        return True

    def result(self) -> tuple[list[Flow], bool]:
        self.out.reverse()
        return self.out, self.reached_oldest and self.obs.lost > 0


class _L7Slot:
    """A stored L7 access-log record with the enrichment it was counted with; the Flow is built once,
    on first read."""

    __slots__ = ("rec", "sm", "dm", "svc", "flow")

    def __init__(self, rec: Any, sm: EndpointMeta, dm: EndpointMeta, svc: Any) -> None:
        self.rec, self.sm, self.dm, self.svc = rec, sm, dm, svc
        self.flow: Flow | None = None


_L7_DENIED_DESC = DROP_REASONS.get(L7_DENIED, (f"REASON_{L7_DENIED}", ""))[0]
_L7_ERROR_DESC = DROP_REASONS.get(L7_ERROR, (f"REASON_{L7_ERROR}", ""))[0]


def _side_name(meta: EndpointMeta, ip: str) -> str:
    """workload_or_ip of the Endpoint that `meta` and `ip` make, without building it."""
    return _node_name(meta.workload, meta.namespace, meta.labels, ip)


def workload_or_ip(e: Endpoint) -> str:
    """The service-map node name of one side: ns/workload, else reserved:x, else the IP."""
    return _node_name(e.workload, e.namespace, e.labels, e.ip)


def _node_name(workload: str, namespace: str, labels: tuple[str, ...], ip: str) -> str:
    if workload:
        if workload.startswith("reserved:"):
            return workload
        return f"{namespace}/{workload}" if namespace else workload
    for kv in labels:
        if kv.startswith("reserved:"):
            return kv.split("=", 1)[0]
    return ip or "unknown"


def drop_reason_name(code: int) -> str:
    return DROP_REASONS.get(code, (f"REASON_{code}", ""))[0]
