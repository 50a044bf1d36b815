"""Frontends -> socket-LB map entries (pure). Backend and service ids stay stable across syncs
so that affinity records and established sockets' reverse records keep meaning the same thing."""

from __future__ import annotations

import gc
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from math import gcd
from typing import Iterable, Iterator, Mapping, Protocol

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

    def release(self, key) -> None:
        got = self.ids.pop(key, None)
        if got is not None:
            self._free.append(got)

    def copy(self) -> "IdAllocator":
        return IdAllocator(dict(self.ids), self.limit, list(self._free), self._next)

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
# Lb4Key is (vip 4s, port 2s, proto B, pad B, slot <H, pad H): a frontend's keys share their first
# 8 bytes and differ in the last 4, which are precomputed for the slot numbers in common use.
_SLOT = struct.Struct("<HH")
_SLOT_SUFFIX = tuple(_SLOT.pack(s, 0) for s in range(1025))
_PROTO_PAD = tuple(bytes((p, 0)) for p in range(256))
# A slot value (backend_id, 0, 0, 0, 0) is the backend key followed by zeros.
_SLOT_VAL_TAIL = bytes(_SVC_VAL.size - _BE_KEY.size)
_inet_aton = socket.inet_aton


def plan_frontend(f: Frontend, fk: FrontendKey, rev_ids: IdAllocator, backend_ids: IdAllocator,
                  max_slots: int = 256) -> tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]:
    """One frontend's entries: (ost_lb4_svc entries, ost_lb4_backend entries, backend keys).
    Packs bytes directly (the layouts of the bpf.maps codecs, which the tests compare); this runs
    once per service on a full load, so it avoids per-entry struct packing where it can."""
    rev = rev_ids.ids.get(fk) or rev_ids.get(fk)
    proto = fk[2]
    # _PORT.pack (not int.to_bytes) so a bad port raises the same struct.error as the codecs.
    prefix = _inet_aton(f.vip) + _PORT.pack(f.port) + _PROTO_PAD[proto]
    backends = f.backends
    svc: dict[bytes, bytes] = {}
    be: dict[bytes, bytes] = {}
    bks: list[BackendKey] = []
    slot = 0
    be_ids = backend_ids.ids
    suffix = _SLOT_SUFFIX
    tail = _SLOT_VAL_TAIL
    pack_key, pack_be, pack_port = _BE_KEY.pack, _BE_VAL.pack, _PORT.pack
    for b in backends:
        if b.weight != 1:
            break
    else:
        # Every backend weighs 1 (the common case): one slot each.
        for b in backends:
            bk = (fk, b.ip, b.port)
            bid = be_ids.get(bk) or backend_ids.get(bk)
            bks.append(bk)
            bkey = pack_key(bid)
            be[bkey] = pack_be(_inet_aton(b.ip), pack_port(b.port), proto, 0)
            slot += 1
            svc[prefix + (suffix[slot] if slot < 1025 else _SLOT.pack(slot, 0))] = bkey + tail
        backends = ()
    if backends:
        slots_per = slot_weights([b.weight for b in backends], max_slots)
        for b, n in zip(backends, slots_per):
            if n == 0:
                continue
            bk = (fk, b.ip, b.port)
            bid = be_ids.get(bk) or backend_ids.get(bk)
            bks.append(bk)
            bkey = pack_key(bid)
            be[bkey] = pack_be(_inet_aton(b.ip), pack_port(b.port), proto, 0)
            sval = bkey + tail
            for _ in range(n):
                slot += 1
                svc[prefix + (suffix[slot] if slot < 1025 else _SLOT.pack(slot, 0))] = sval
    flags = SVC_FLAG_AFFINITY if f.affinity_timeout > 0 else 0
    svc[prefix + suffix[0]] = _SVC_VAL.pack(0, slot, flags, rev, f.affinity_timeout)
    return svc, be, bks


def index_frontends(frontends: Iterable[Frontend]) -> dict[FrontendKey, Frontend]:
    """Frontends by key; two services on one VIP:port/protocol is a ConflictError."""
    out: dict[FrontendKey, Frontend] = {}
    protos = PROTOCOL_NUMBERS
    for f in frontends:
        proto = protos.get(f.protocol)
        fk = (f.vip, f.port, proto) if proto is not None else frontend_key(f)   # (raises)
        if fk in out:
            other = out[fk]
            raise ConflictError(
                f"service {f.service or '?'}: {f.vip}:{f.port}/{f.protocol} is already the frontend of "
                f"service {other.service or '?'}")
        out[fk] = f
    return out


class FrontendEntries(Protocol):
    """What the datapath remembers per programmed frontend (its _FrontendState)."""

    frontend: Frontend | None
    svc: dict[bytes, bytes]
    be: dict[bytes, bytes]
    bks: list


@dataclass(slots=True)
class SyncPlan:
    """What one sync_services call writes and removes, in the order it must: backends, then
    slots, then masters; deletions master first. `changed` is the new per-frontend state
    (frontend, svc entries, backend entries, backend keys) of every frontend planned anew."""

    changed: dict[FrontendKey, tuple[Frontend, dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]]
    removed: list[FrontendKey]
    slots: dict[bytes, bytes]        # ost_lb4_svc upserts with slot != 0
    masters: dict[bytes, bytes]      # ost_lb4_svc upserts with slot == 0
    be_up: dict[bytes, bytes]
    svc_del: list[bytes]
    be_del: list[bytes]

    @property
    def svc_up(self) -> dict[bytes, bytes]:
        return {**self.slots, **self.masters}


def _is_master(key: bytes) -> bool:
    return key[8:10] == b"\0\0"


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: planning 10,000 frontends makes ~100,000 small
    containers, none of them in a cycle, and the collections their allocation triggers scan
    them all again and again for nothing (~15% of a full load). Leaves gc as it found it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def plan_sync(old: Mapping[FrontendKey, FrontendEntries], new: dict[FrontendKey, Frontend],
              rev_ids: IdAllocator, backend_ids: IdAllocator, max_slots: int = 256) -> SyncPlan:
    """The changes that take the maps from `old` (per-frontend state of what is programmed) to
    the frontends `new` (index_frontends' output); allocators (copies: the caller keeps them
    only if the write succeeds) are updated in place. Unchanged frontends (the same object or
    equal) are skipped. Same result as planning each frontend with plan_frontend and diffing
    against its old entries, in bulk: a frontend that did not exist before has nothing to diff
    against, so its entries are taken whole."""
    with gc_paused():
        return _plan_sync(old, new, rev_ids, backend_ids, max_slots)


def _plan_sync(old: Mapping[FrontendKey, FrontendEntries], new: dict[FrontendKey, Frontend],
               rev_ids: IdAllocator, backend_ids: IdAllocator, max_slots: int) -> SyncPlan:
    slots: dict[bytes, bytes] = {}
    masters: dict[bytes, bytes] = {}
    be_up: dict[bytes, bytes] = {}
    svc_del: list[bytes] = []
    be_del: list[bytes] = []
    changed: dict[FrontendKey, tuple[Frontend, dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]] = {}
    removed = [fk for fk in old if fk not in new]
    for fk in removed:
        st = old[fk]
        svc_del.extend(st.svc)
        be_del.extend(st.be)
        rev_ids.release(fk)
        for bk in st.bks:
            backend_ids.release(bk)
    old_get = old.get
    rev_known, be_known = rev_ids.ids, backend_ids.ids
    rev_get, be_get = rev_ids.get, backend_ids.get
    pack_key, pack_be, pack_port = _BE_KEY.pack, _BE_VAL.pack, _PORT.pack
    suffix, tail, proto_pad, aton = _SLOT_SUFFIX, _SLOT_VAL_TAIL, _PROTO_PAD, _inet_aton
    for fk, f in new.items():
        st = old_get(fk)
        if st is None:
            # A frontend that was not there: all of its entries are new. The common shape (every
            # backend weighs 1, a handful of them) is plan_frontend inlined, writing each entry
            # into the batch as it is made (a full load is 10,000s of these).
            backends = f.backends
            if len(backends) < 1024:
                for b in backends:
                    if b.weight != 1:
                        break
                else:
                    rev = rev_known.get(fk) or rev_get(fk)
                    proto = fk[2]
                    prefix = aton(f.vip) + pack_port(f.port) + proto_pad[proto]
                    svc = {}
                    be = {}
                    bks = []
                    slot = 0
                    for b in backends:
                        bk = (fk, b.ip, b.port)
                        bid = be_known.get(bk) or be_get(bk)
                        bks.append(bk)
                        bkey = pack_key(bid)
                        be[bkey] = be_up[bkey] = pack_be(aton(b.ip), pack_port(b.port), proto, 0)
                        slot += 1
                        k = prefix + suffix[slot]
                        svc[k] = slots[k] = bkey + tail
                    k = prefix + suffix[0]
                    svc[k] = masters[k] = _SVC_VAL.pack(0, slot, SVC_FLAG_AFFINITY if f.affinity_timeout > 0 else 0,
                                                        rev, f.affinity_timeout)
                    changed[fk] = (f, svc, be, bks)
                    continue
            svc, be, bks = plan_frontend(f, fk, rev_ids, backend_ids, max_slots)
            # plan_frontend puts the master entry last.
            mk = next(reversed(svc))
            slots.update(svc)
            masters[mk] = slots.pop(mk)
            be_up.update(be)
            changed[fk] = (f, svc, be, bks)
            continue
        if st.frontend is not None and (st.frontend is f or st.frontend == f):
            continue
        svc, be, bks = plan_frontend(f, fk, rev_ids, backend_ids, max_slots)
        old_svc, old_be = st.svc, st.be
        for k, v in svc.items():
            if old_svc.get(k) != v:
                (masters if _is_master(k) else slots)[k] = v
        be_up.update((k, v) for k, v in be.items() if old_be.get(k) != v)
        svc_del.extend(k for k in old_svc if k not in svc)
        be_del.extend(k for k in old_be if k not in be)
        for bk in set(st.bks) - set(bks):
            backend_ids.release(bk)
        changed[fk] = (f, svc, be, bks)
    return SyncPlan(changed, removed, slots, masters, be_up, svc_del, be_del)


def plan(frontends: Iterable[Frontend], rev_ids: IdAllocator, backend_ids: IdAllocator,
         max_slots: int = 256) -> LbState:
    """The full contents of ost_lb4_svc and ost_lb4_backend for these frontends. Allocators are
    updated in place (ids of vanished frontends/backends are released)."""
    services: dict[bytes, bytes] = {}
    backends: dict[bytes, bytes] = {}
    keep_be: set = set()
    indexed = index_frontends(frontends)
    for fk, f in indexed.items():
        svc, be, bks = plan_frontend(f, fk, rev_ids, backend_ids, max_slots)
        services.update(svc)
        backends.update(be)
        keep_be.update(bks)
    rev_ids.retain(set(indexed))
    backend_ids.retain(keep_be)
    return LbState(services, backends)


def group_by_frontend(services: dict[bytes, bytes], backends: dict[bytes, bytes]
                      ) -> dict[FrontendKey, tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]]:
    """Pinned map contents regrouped per frontend (agent restart), like plan_frontend's output."""
    out: dict[FrontendKey, tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]] = {}
    for k, v in services.items():
        key = Lb4Key.unpack(k)
        fk = (key.address, key.port, key.proto)
        svc, be, bks = out.setdefault(fk, ({}, {}, []))
        svc[k] = v
        if key.slot:
            bid = Lb4Service.unpack(v).backend_id
            bkey = BackendId(bid).pack()
            raw = backends.get(bkey)
            if raw is not None and bkey not in be:
                be[bkey] = raw
                b = Lb4Backend.unpack(raw)
                bks.append((fk, b.address, b.port))
    return out

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
