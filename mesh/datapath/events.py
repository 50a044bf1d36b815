"""Fan-out of the datapath's trace/drop events to many readers (the ring has one consumer).

Record format (one JSON object per line on GET /v1/monitor):
  time         ISO 8601 UTC, microseconds (from the event's CLOCK_MONOTONIC stamp)
  type         "drop" | "trace"
  verdict      "FORWARDED" | "REDIRECTED" | "DROPPED"
  reason       "NEW_FLOW" | "POLICY_DENY" | "POLICY_DEFAULT_DENY" | "UNSUPPORTED_L3" | "INVALID_PACKET"
               | "PROXY_UNAVAILABLE" | "PROXY_BYPASS" | "PROXY_BOTH_ENDS" (L7 redirect, fail closed)
  reason_text  human text of the reason
  direction    "ingress" | "egress"   (of the endpoint whose veth saw the packet)
  endpoint     endpoint id;  ifindex  host-side veth ifindex
  protocol     "TCP" | "UDP" | "ICMP" | number
  src, dst     {"ip", "port" (not for ICMP), "identity", "labels" (when the resolver knows them)}
  tcp_flags    ["SYN", "ACK", ...] (TCP);  icmp_type (ICMP);  proxy_port (REDIRECTED)
  length       packet length;  ktime_ns  raw kernel timestamp
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

from bpf.maps import Event

LabelResolver = Callable[[int], "dict[str, str] | None"]


def event_record(ev: Event, resolve: LabelResolver | None = None) -> dict[str, Any]:
    rec = ev.to_json()
    wall = time.time() - (time.monotonic_ns() - ev.ts_ns) / 1e9
    rec = {"time": datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="microseconds"), **rec}
    if resolve is not None:
        for side in ("src", "dst"):
            labels = resolve(rec[side]["identity"])
            if labels is not None:
                rec[side]["labels"] = labels
    return rec


class EventHub:
    """Reads Datapath.events() once and hands every record to each subscriber. A slow subscriber
    loses its oldest records (counted in `lost`), never blocks the others."""

    def __init__(self, datapath: Any, resolve: LabelResolver | None = None, queue_size: int = 4096) -> None:
        self.datapath = datapath
        self.resolve = resolve
        self.queue_size = queue_size
        self._subs: set[asyncio.Queue] = set()
        self.lost = 0

    async def run(self) -> None:
        async for ev in self.datapath.events():
            if self._subs:
                self.publish(event_record(ev, self.resolve))

    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def publish(self, rec: dict[str, Any]) -> None:
        """Hand one record to every subscriber (for a reader loop that owns the ring itself)."""
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
                self.lost += 1
            q.put_nowait(rec)

    async def subscribe(self, types: set[str] | None = None, endpoint: int | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
        q: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._subs.add(q)
        try:
            while True:
                rec = await q.get()
                if types and rec["type"] not in types:
                    continue
                if endpoint is not None and rec["endpoint"] != endpoint:
                    continue
                yield rec
        finally:
            self._subs.discard(q)
