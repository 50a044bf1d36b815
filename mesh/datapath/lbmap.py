"""Frontends -> socket-LB map entries (pure). Backend and service ids stay stable across syncs
so that affinity records and established sockets' reverse records keep meaning the same thing."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from functools import reduce
from math import gcd
from typing import Iterable

from bpf.maps import SVC_FLAG_AFFINITY, BackendId, Lb4Backend, Lb4Key, Lb4Service
from mesh.errors import ConflictError, DatapathError
from mesh.services.model import PROTOCOL_NUMBERS, Frontend

FrontendKey = tuple[str, int, int]           # vip, port, proto number
BackendKey = tuple[FrontendKey, str, int]    # frontend, backend ip, backend port


def slot_weights(weights: list[int], max_slots: int) -> list[int]:
    """Slots per backend in proportion to its weight, at most max_slots in total; a backend of
    positive weight always gets at least one slot, weight 0 none (drained)."""
    live = [w for w in weights if w > 0]
    if not live:
        return [0] * len(weights)
    g = reduce(gcd, live)
    slots = [w // g for w in weights]
    total = sum(slots)
    if total > max_slots:
        slots = [max(1, round(s * max_slots / total)) if s else 0 for s in slots]
    return slots


@dataclass(slots=True)
class IdAllocator:
    """Small integers for keys, reused after release; ids start at 1 (0 means none)."""

    ids: dict = field(default_factory=dict)
    limit: int = 0xFFFFFFFF
    _free: list[int] = field(default_factory=list)
    _next: int = 1

    def get(self, key) -> int:
        got = self.ids.get(key)
        if got is not None:
            return got
        if self._free:
            new = self._free.pop()
        else:
            if self._next > self.limit:
                raise DatapathError(f"out of ids (limit {self.limit})")
            new = self._next
            self._next += 1
        self.ids[key] = new
        return new

    def adopt(self, key, value: int) -> None:
        self.ids[key] = value
        self._next = max(self._next, value + 1)

    def retain(self, keep: set) -> None:
        for k in [k for k in self.ids if k not in keep]:
            self._free.append(self.ids.pop(k))


@dataclass(slots=True)
class LbState:
    """Desired map contents: key bytes -> value bytes, per map."""

    services: dict[bytes, bytes]
    backends: dict[bytes, bytes]


def frontend_key(f: Frontend) -> FrontendKey:
    try:
        proto = PROTOCOL_NUMBERS[f.protocol]
    except KeyError:
        raise DatapathError(f"frontend {f.vip}:{f.port}: unknown protocol {f.protocol!r}") from None
    return (f.vip, f.port, proto)


_SVC_KEY = struct.Struct(Lb4Key.FMT)
_SVC_VAL = struct.Struct(Lb4Service.FMT)
_BE_KEY = struct.Struct(BackendId.FMT)
_BE_VAL = struct.Struct(Lb4Backend.FMT)
_PORT = struct.Struct("!H")


def plan(frontends: Iterable[Frontend], rev_ids: IdAllocator, backend_ids: IdAllocator,
         max_slots: int = 256, cache: dict | None = None) -> LbState:
    """Compute the full contents of ost_lb4_svc and ost_lb4_backend for these frontends.
    Allocators are updated in place (ids of vanished frontends/backends are released).

    `cache` (Frontend -> its packed entries) makes a re-sync cost only what changed: the agent
    re-syncs the full set whenever one service changes. The hot loop packs bytes directly (same
    layouts as the bpf.maps codecs, which the tests compare)."""
    services: dict[bytes, bytes] = {}
    backends: dict[bytes, bytes] = {}
    owners: dict[FrontendKey, str] = {}
    keep_rev: set = set()
    keep_be: set = set()
    aton = socket.inet_aton
    svc_key, svc_val, be_key, be_val = _SVC_KEY.pack, _SVC_VAL.pack, _BE_KEY.pack, _BE_VAL.pack
    port_pack = _PORT.pack
    rev_map, be_map = rev_ids.ids, backend_ids.ids
    new_cache: dict = {}
    for f in frontends:
        proto = PROTOCOL_NUMBERS.get(f.protocol)
        if proto is None:
            raise DatapathError(f"frontend {f.vip}:{f.port}: unknown protocol {f.protocol!r}")
        fk = (f.vip, f.port, proto)
        if fk in owners:
            raise ConflictError(
                f"service {f.service or '?'}: {f.vip}:{f.port}/{f.protocol} is already the frontend of "
                f"service {owners[fk] or '?'}")
        owners[fk] = f.service
        keep_rev.add(fk)
        hit = cache.get(f) if cache is not None else None
        if hit is not None:
            svc_items, be_items, bks = hit
            services.update(svc_items)
            backends.update(be_items)
            keep_be.update(bks)
            new_cache[f] = hit
            continue
        rev = rev_map.get(fk) or rev_ids.get(fk)
        vip, vport = aton(f.vip), port_pack(f.port)
        weights = [b.weight for b in f.backends]
        slots_per = weights if all(w == 1 for w in weights) else slot_weights(weights, max_slots)
        slot = 0
        svc_items: list[tuple[bytes, bytes]] = []
        be_items: list[tuple[bytes, bytes]] = []
        bks: list = []
        for b, n in zip(f.backends, slots_per):
            if n == 0:
                continue
            bk = (fk, b.ip, b.port)
            bid = be_map.get(bk) or backend_ids.get(bk)
            bks.append(bk)
            be_items.append((be_key(bid), be_val(aton(b.ip), port_pack(b.port), proto, 0)))
            sval = svc_val(bid, 0, 0, 0, 0)
            for _ in range(n):
                slot += 1
                svc_items.append((svc_key(vip, vport, proto, 0, slot, 0), sval))
        flags = SVC_FLAG_AFFINITY if f.affinity_timeout > 0 else 0
        svc_items.append((svc_key(vip, vport, proto, 0, 0, 0), svc_val(0, slot, flags, rev, f.affinity_timeout)))
        services.update(svc_items)
        backends.update(be_items)
        keep_be.update(bks)
        new_cache[f] = (svc_items, be_items, bks)
    if len(keep_rev) != len(rev_map):
        rev_ids.retain(keep_rev)
    if len(keep_be) != len(be_map):
        backend_ids.retain(keep_be)
    if cache is not None:
        cache.clear()
        cache.update(new_cache)
    return LbState(services, backends)

def adopt(services: dict[bytes, bytes], backends: dict[bytes, bytes], rev_ids: IdAllocator,
          backend_ids: IdAllocator) -> None:
    """Rebuild the id allocators from pinned map contents (agent restart)."""
    be_addr = {BackendId.unpack(k).id: Lb4Backend.unpack(v) for k, v in backends.items()}
    for k, v in services.items():
        key = Lb4Key.unpack(k)
        val = Lb4Service.unpack(v)
        fk = (key.address, key.port, key.proto)
        if key.slot == 0:
            rev_ids.adopt(fk, val.rev_nat_id)
        else:
            b = be_addr.get(val.backend_id)
            if b is not None:
                backend_ids.adopt((fk, b.address, b.port), val.backend_id)
