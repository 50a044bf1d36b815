"""Frontends -> socket-LB map entries (pure). Backend and service ids stay stable across syncs
so that affinity records and established sockets' reverse records keep meaning the same thing."""

from __future__ import annotations

import gc
import socket
import struct
import sys
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain, repeat
from math import gcd
from operator import add, attrgetter, itemgetter, mul
from typing import Iterable, Iterator, Mapping, Union

from bpf.maps import SVC_FLAG_AFFINITY, BackendId, Lb4Backend, Lb4Key, Lb4Service
from mesh.errors import ConflictError, DatapathError
from mesh.services.model import PROTOCOL_NUMBERS, Frontend

FrontendKey = tuple[str, int, int]           # vip, port, proto number
# A backend of a frontend, the key of its backend id: the frontend's 8-byte key prefix (vip,
# port in network order, proto, pad) + the backend's ip and port (network order), 14 bytes.
# Bytes, not a tuple: a full load makes 10,000s of them and bytes are no work for the cyclic
# garbage collector (a tuple is, until a collection has looked at it).
BackendKey = bytes


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

    def release_many(self, keys: Iterable) -> None:
        """release() for each key, in order (C-level: a full removal releases 10,000s). Ids
        start at 1, so filter(None) drops exactly the keys that had none."""
        self._free.extend(filter(None, map(self.ids.pop, keys, repeat(None))))

    def take(self, keys: list) -> list[int] | None:
        """Ids for distinct keys at once: the ids get() would hand out one key after the other,
        from the free list (last released first), then new ones. None, with nothing changed,
        when some key has an id already (get() one by one is then the way)."""
        ids = self.ids
        if ids and not ids.keys().isdisjoint(keys):
            return None
        free = self._free
        n = len(keys)
        k = min(n, len(free))
        got = free[len(free) - k:]
        got.reverse()
        rest = n - k
        if rest:
            if self._next + rest - 1 > self.limit:
                raise DatapathError(f"out of ids (limit {self.limit})")
            got.extend(range(self._next, self._next + rest))
            self._next += rest
        del free[len(free) - k:]
        ids.update(zip(keys, got))
        return got

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
            val = pack_be(_inet_aton(b.ip), pack_port(b.port), proto, 0)
            bk = prefix + val[:6]
            bid = be_ids.get(bk) or backend_ids.get(bk)
            bks.append(bk)
            bkey = pack_key(bid)
            be[bkey] = val
            slot += 1
            svc[prefix + (suffix[slot] if slot < 1025 else _SLOT.pack(slot, 0))] = bkey + tail
        backends = ()
    if backends:
        slots_per = slot_weights([b.weight for b in backends], max_slots)
        for b, n in zip(backends, slots_per):
            if n == 0:
                continue
            val = pack_be(_inet_aton(b.ip), pack_port(b.port), proto, 0)
            bk = prefix + val[:6]
            bid = be_ids.get(bk) or backend_ids.get(bk)
            bks.append(bk)
            bkey = pack_key(bid)
            be[bkey] = val
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


@dataclass(frozen=True, slots=True)
class AdoptedEntries:
    """A frontend's entries as read back from the pinned maps after an agent restart: its
    Frontend is not known until the next sync, which plans it anew and writes what differs."""

    svc: dict[bytes, bytes]
    be: dict[bytes, bytes]
    bks: list[BackendKey]


# What the datapath keeps per programmed frontend: the Frontend it was planned from (its entries
# are planned again from it when it changes or goes: the ids are still in the allocators, so the
# same bytes come out), or the entries adopted from pinned maps.
FrontendRecord = Union[Frontend, AdoptedEntries]


def entries_of(rec: FrontendRecord, fk: FrontendKey, rev_ids: IdAllocator, backend_ids: IdAllocator,
               max_slots: int = 256) -> tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]:
    """The entries a programmed frontend has in the maps. For a Frontend record every id it
    needs is still allocated (ids are released only after its entries are known), so nothing is
    allocated here."""
    if isinstance(rec, AdoptedEntries):
        return rec.svc, rec.be, rec.bks
    return plan_frontend(rec, fk, rev_ids, backend_ids, max_slots)


@dataclass(slots=True)
class Upserts:
    """Entries to write into one map: the key array and the value array the batch syscall
    reads, kept in pieces (single entries from the per-frontend planner, whole runs of entries
    from plan_fresh) and joined once. Keys are distinct."""

    key_size: int
    val_size: int
    key_parts: list[bytes] = field(default_factory=list)
    val_parts: list[bytes] = field(default_factory=list)
    count: int = 0

    @classmethod
    def of(cls, key_size: int, val_size: int, entries: Iterable[tuple[bytes, bytes]]) -> "Upserts":
        out = cls(key_size, val_size)
        for k, v in entries:
            out.add(k, v)
        return out

    def __len__(self) -> int:
        return self.count

    def add(self, key: bytes, value: bytes) -> None:
        self.key_parts.append(key)
        self.val_parts.append(value)
        self.count += 1

    def add_run(self, keys: bytes, values: bytes) -> None:
        """Entries packed back to back (key_size and val_size bytes each)."""
        n = len(keys) // self.key_size
        if n * self.key_size != len(keys) or n * self.val_size != len(values):
            raise DatapathError(f"a run of {len(keys)} key bytes and {len(values)} value bytes is not "
                                f"whole entries of {self.key_size}+{self.val_size} bytes")
        if n:
            self.key_parts.append(keys)
            self.val_parts.append(values)
            self.count += n

    def arrays(self) -> tuple[bytes, bytes]:
        """(keys, values) as the batch syscall reads them."""
        return b"".join(self.key_parts), b"".join(self.val_parts)

    @property
    def keys(self) -> list[bytes]:
        raw, ks = b"".join(self.key_parts), self.key_size
        return [raw[i:i + ks] for i in range(0, len(raw), ks)]

    @property
    def vals(self) -> list[bytes]:
        raw, vs = b"".join(self.val_parts), self.val_size
        return [raw[i:i + vs] for i in range(0, len(raw), vs)]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return zip(self.keys, self.vals)

    def as_dict(self) -> dict[bytes, bytes]:
        return dict(self.items())


@dataclass(slots=True)
class Keys:
    """Keys to delete from one map, in order: single keys and runs of keys packed back to back
    (plan_fresh's arrays), joined once for the batch syscall."""

    key_size: int
    parts: list[bytes] = field(default_factory=list)
    count: int = 0

    def add(self, key: bytes) -> None:
        self.parts.append(key)
        self.count += 1

    def extend(self, keys: Iterable[bytes]) -> None:
        for k in keys:
            self.add(k)

    def add_run(self, raw: bytes) -> None:
        n = len(raw) // self.key_size
        if n * self.key_size != len(raw):
            raise DatapathError(f"a run of {len(raw)} key bytes is not whole keys of {self.key_size} bytes")
        if n:
            self.parts.append(raw)
            self.count += n

    def __len__(self) -> int:
        return self.count

    def array(self) -> bytes:
        return b"".join(self.parts)

    def __iter__(self) -> Iterator[bytes]:
        raw, ks = self.array(), self.key_size
        return iter([raw[i:i + ks] for i in range(0, len(raw), ks)])


@dataclass(slots=True)
class SyncPlan:
    """What one sync_services call writes and removes, in the order it must: backends, then
    slots, then masters; deletions master first. Ids released by this sync (removed frontends,
    backends a frontend lost) go back to the allocators only after every id of the sync was
    handed out, so no key is both written and deleted. The maps hold exactly the entries of the
    programmed frontends, so the plan also knows how the maps' fill changes and what each
    overwritten key held (the rollback of a failed write) without a mirror of the maps."""

    changed: list[FrontendKey]       # planned anew: new, changed, adopted and re-synced
    removed: list[FrontendKey]
    slots: Upserts                   # ost_lb4_svc upserts with slot != 0
    masters: Upserts                 # ost_lb4_svc upserts with slot == 0
    be_up: Upserts
    removed_svc: Keys                # every entry of the removed frontends, master entries first
    removed_be: Keys
    stale_svc: Keys                  # slots that changed frontends no longer have (never a master)
    stale_be: Keys                   # backends that changed frontends no longer have
    svc_added: int                   # upserts to keys not in the map yet
    be_added: int
    overwritten_svc: dict[bytes, bytes]   # upserted keys that are in the map: their current value
    overwritten_be: dict[bytes, bytes]
    removed_bks: list[BackendKey]    # the removed frontends' backend keys (their ids are released)

    @property
    def svc_del(self) -> list[bytes]:
        """ost_lb4_svc deletions in order: a changed frontend's new master entry (written
        before any deletion) no longer counts its stale slots, so only removed frontends need
        their master entry deleted first."""
        return [*self.removed_svc, *self.stale_svc]

    @property
    def be_del(self) -> list[bytes]:
        return [*self.removed_be, *self.stale_be]

    @property
    def svc_up(self) -> dict[bytes, bytes]:
        return {**self.slots.as_dict(), **self.masters.as_dict()}


def _masters_first(keys: Iterable[bytes]) -> list[bytes]:
    masters: list[bytes] = []
    rest: list[bytes] = []
    for k in keys:
        (masters if k[8:10] == b"\0\0" else rest).append(k)
    return masters + rest


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: planning 10,000 frontends makes tens of thousands
    of small containers, none of them in a cycle, and the collections their allocation
    triggers scan them all again and again for nothing. Leaves gc as it found it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def plan_sync(old: Mapping[FrontendKey, FrontendRecord], new: dict[FrontendKey, Frontend],
              rev_ids: IdAllocator, backend_ids: IdAllocator, max_slots: int = 256) -> SyncPlan:
    """The changes that take the maps from `old` (per-frontend record of what is programmed) to
    the frontends `new` (index_frontends' output); allocators (copies: the caller keeps them
    only if the write succeeds) are updated in place. Unchanged frontends (the same object or
    equal) are skipped. Changed and adopted frontends are planned one by one and diffed against
    their old entries; frontends that were not there have nothing to diff against and are
    planned together, column by column (plan_fresh), after them."""
    with gc_paused():
        return _plan_sync(old, new, rev_ids, backend_ids, max_slots)


def _plan_sync(old: Mapping[FrontendKey, FrontendRecord], new: dict[FrontendKey, Frontend],
               rev_ids: IdAllocator, backend_ids: IdAllocator, max_slots: int) -> SyncPlan:
    slots, masters = Upserts(_SVC_KEY.size, _SVC_VAL.size), Upserts(_SVC_KEY.size, _SVC_VAL.size)
    be_up = Upserts(_BE_KEY.size, _BE_VAL.size)
    removed_svc, stale_svc = Keys(_SVC_KEY.size), Keys(_SVC_KEY.size)
    removed_be, stale_be = Keys(_BE_KEY.size), Keys(_BE_KEY.size)
    over_svc: dict[bytes, bytes] = {}
    over_be: dict[bytes, bytes] = {}
    release_be: list[BackendKey] = []
    removed = ([fk for fk in old if fk not in new] if new else list(old)) if old else []
    if removed:
        # The removed frontends' entries: those planned from a Frontend are planned again, in
        # bulk like a load (their ids are still allocated), the adopted ones are at hand.
        gone_fks, gone, adopted_svc = [], [], []
        for fk in removed:
            rec = old[fk]
            if isinstance(rec, AdoptedEntries):
                adopted_svc.extend(rec.svc)
                removed_be.extend(rec.be)
                release_be.extend(rec.bks)
            else:
                gone_fks.append(fk)
                gone.append(rec)
        gone_slots, gone_masters = Upserts(_SVC_KEY.size, _SVC_VAL.size), Upserts(_SVC_KEY.size, _SVC_VAL.size)
        gone_be = Upserts(_BE_KEY.size, _BE_VAL.size)
        if gone:
            release_be.extend(plan_fresh(gone_fks, gone, rev_ids, backend_ids, max_slots, gone_slots, gone_masters,
                                         gone_be, existing=True))
        removed_svc.add_run(b"".join(gone_masters.key_parts))
        removed_svc.extend(_masters_first(adopted_svc))
        removed_svc.add_run(b"".join(gone_slots.key_parts))
        removed_be.add_run(b"".join(gone_be.key_parts))
    removed_bks = list(release_be)
    changed: list[FrontendKey] = []
    if old:
        fresh_fks: list[FrontendKey] = []
        fresh: list[Frontend] = []
        old_get = old.get
        for fk, f in new.items():
            rec = old_get(fk)
            if rec is None:
                fresh_fks.append(fk)
                fresh.append(f)
                continue
            if rec is f or rec == f:
                continue
            old_svc, old_be, old_bks = entries_of(rec, fk, rev_ids, backend_ids, max_slots)
            svc, be, bks = plan_frontend(f, fk, rev_ids, backend_ids, max_slots)
            for k, v in svc.items():
                was = old_svc.get(k)
                if was != v:
                    (masters if k[8:10] == b"\0\0" else slots).add(k, v)
                    if was is not None:
                        over_svc[k] = was
            for k, v in be.items():
                was = old_be.get(k)
                if was != v:
                    be_up.add(k, v)
                    if was is not None:
                        over_be[k] = was
            stale_svc.extend(k for k in old_svc if k not in svc)
            stale_be.extend(k for k in old_be if k not in be)
            if old_bks:
                kept = set(bks)
                release_be.extend(bk for bk in dict.fromkeys(old_bks) if bk not in kept)
            changed.append(fk)
    else:
        fresh_fks, fresh = list(new), list(new.values())
    if fresh:
        plan_fresh(fresh_fks, fresh, rev_ids, backend_ids, max_slots, slots, masters, be_up)
        changed.extend(fresh_fks)
    rev_ids.release_many(removed)
    backend_ids.release_many(release_be)
    # A fresh frontend's keys are all new: its svc keys start with its own VIP:port/proto, its
    # backend ids were free; every other upsert that is not an overwrite is new too.
    return SyncPlan(changed, removed, slots, masters, be_up, removed_svc, removed_be,
                    stale_svc, stale_be, len(slots) + len(masters) - len(over_svc), len(be_up) - len(over_be),
                    over_svc, over_be, removed_bks)


_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)
_backends_of = attrgetter("backends")
_ip_of, _port_of, _weight_of = attrgetter("ip"), attrgetter("port"), attrgetter("weight")
_timeout_of = attrgetter("affinity_timeout")
_LITTLE = sys.byteorder == "little"
assert array("H").itemsize == 2 and array("I").itemsize == 4
# A master's flags from its affinity timeout: 0 < timeout is a bool, stored as 0 or 1.
assert SVC_FLAG_AFFINITY == 1


def _le(typecode: str, values: Iterable[int]) -> bytes:
    """Unsigned integers as little-endian fields of array `typecode`'s size, back to back."""
    a = array(typecode, values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def _be16(values: Iterable[int]) -> bytes:
    """Ports in network order, 2 bytes each, back to back."""
    a = array("H", values)
    if _LITTLE:
        a.byteswap()
    return a.tobytes()


def _records(n: int, size: int, columns: Iterable[tuple[int, int, bytes]]) -> bytes:
    """n records of `size` bytes, zero but for the columns (offset, width, data): data holds n
    fields of `width` bytes back to back and field i lands at `offset` of record i. One
    extended-slice copy per byte of a field's width: C-level work, none per record."""
    out = bytearray(n * size)
    for off, width, data in columns:
        for j in range(width):
            out[off + j::size] = data[j::width]
    return bytes(out)


def _check_range(values: list, hi: int, what: str, fronts: list[Frontend]) -> None:
    """The first value that is no integer in 0..hi, as a DatapathError naming its frontend."""
    for v, f in zip(values, fronts):
        if not (isinstance(v, int) and 0 <= v <= hi):
            raise DatapathError(f"frontend {f.vip}:{f.port}/{f.protocol} (service {f.service or '?'}): "
                                f"{what} {v!r} is outside 0..{hi}") from None


def plan_fresh(fks: list[FrontendKey], fronts: list[Frontend], rev_ids: IdAllocator,
               backend_ids: IdAllocator, max_slots: int, slots: Upserts, masters: Upserts,
               be_up: Upserts, existing: bool = False) -> list[BackendKey]:
    """Entries of frontends that have none yet (distinct keys, no ids allocated), appended to
    the batches: the same bytes, ids and order as plan_frontend one frontend after the other,
    built a column at a time instead (all VIPs, all ports, all backend ids ...) and laid out
    into the key and value arrays the kernel reads by byte lanes (_records), so a full load of
    10,000s of services makes no Python object per entry and runs no Python code per entry
    beyond a few C-level map/zip calls. With `existing`, the frontends are programmed already
    and their ids are looked up instead (their entries, to remove them). Returns the backend
    keys, each once."""
    n = len(fks)
    ports = list(map(_second, fks))
    timeouts = list(map(_timeout_of, fronts))
    protos = list(map(_third, fks))
    bts = list(map(_backends_of, fronts))
    counts = list(map(len, bts))
    ones = counts.count(1) == n          # one backend each: one slot each, no duplicates
    flat: list = list(map(_first, bts)) if ones else [b for bt in bts for b in bt]
    nslots: list[int] | None = None      # slots per entry of `flat`; None: one each
    totals = counts                      # slots per frontend
    per_front = counts                   # entries of `flat` per frontend
    if flat and set(map(_weight_of, flat)) != {1}:
        # Weighted or drained backends: slot counts per frontend as plan_frontend makes them
        # (a drained backend gets no slot and no id).
        flat, nslots, totals, per_front = [], [], [], []
        for bt in bts:
            ks = [1] * len(bt) if all(b.weight == 1 for b in bt) else slot_weights([b.weight for b in bt], max_slots)
            total = used = 0
            for b, k in zip(bt, ks):
                if k:
                    flat.append(b)
                    nslots.append(k)
                    total += k
                    used += 1
            totals.append(total)
            per_front.append(used)
        ones = False
    ips = list(map(_ip_of, flat))
    bports = list(map(_port_of, flat))
    try:
        return _plan_fresh_entries(fks, ports, protos, timeouts, totals, per_front, nslots, ips, bports, ones,
                                   rev_ids, backend_ids, slots, masters, be_up, existing)
    except (OverflowError, TypeError):
        # A field the arrays cannot hold (array() checks every value in C): say which.
        _check_range(ports, 0xFFFF, "port", fronts)
        _check_range(timeouts, 0xFFFFFFFF, "affinity timeout", fronts)
        _check_range(totals, 0xFFFF, "slot count", fronts)
        for f in fronts:
            for b in f.backends:
                if not (isinstance(b.port, int) and 0 <= b.port <= 0xFFFF):
                    raise DatapathError(f"frontend {f.vip}:{f.port}/{f.protocol} (service {f.service or '?'}): "
                                        f"backend {b.ip} port {b.port!r} is outside 0..65535") from None
        raise


def _plan_fresh_entries(fks: list[FrontendKey], ports: list[int], protos: list[int], timeouts: list[int],
                        totals: list[int], per_front: list[int], nslots: list[int] | None, ips: list[str],
                        bports: list[int], ones: bool, rev_ids: IdAllocator, backend_ids: IdAllocator,
                        slots: Upserts, masters: Upserts, be_up: Upserts, existing: bool) -> list[BackendKey]:
    n, m = len(fks), len(ips)
    aton = _inet_aton
    # Every frontend's 8-byte key prefix: (vip, port in network order, proto, pad).
    proto_col = bytes(protos)
    prefix = _records(n, 8, ((0, 4, b"".join(map(aton, map(_first, fks)))), (4, 2, _be16(ports)), (6, 1, proto_col)))
    prefixes = None if ones else [prefix[i:i + 8] for i in range(0, 8 * n, 8)]
    # Backend keys (prefix + backend ip + port), 14 bytes each, one per entry of `flat`.
    ip_bytes = {ip: aton(ip) for ip in set(ips)}       # backends share addresses across services
    bk_raw = _records(m, 14, ((0, 8, prefix if ones else b"".join(map(mul, prefixes, per_front))),
                              (8, 4, b"".join(map(ip_bytes.__getitem__, ips))), (12, 2, _be16(bports))))
    bks = [bk_raw[i:i + 14] for i in range(0, 14 * m, 14)]

    # Ids, in the order plan_frontend would take them: the frontends' service ids, then per
    # backend in order, the same backend twice in one frontend sharing one id.
    ids_of = _ids_of if existing else _take_ids
    revs = ids_of(rev_ids, fks)
    uniq = None if ones else dict.fromkeys(bks)
    if uniq is not None and len(uniq) != len(bks):
        ukeys = list(uniq)
        ubids = ids_of(backend_ids, ukeys)
        by_key = dict(zip(ukeys, ubids))
        bids = list(map(by_key.__getitem__, bks))
        u_raw = b"".join(ukeys)
    else:
        ukeys, u_raw = bks, bk_raw
        ubids = bids = ids_of(backend_ids, bks)

    # ost_lb4_backend: id -> (ip, port in network order, proto, flags 0): bytes 8..13 and 6 of
    # the backend key.
    be_up.add_run(_le("I", ubids), _records(len(ubids), 8, [(j, 1, u_raw[8 + j::14]) for j in range(6)]
                                            + [(6, 1, u_raw[6::14])]))
    # ost_lb4_svc keys: the prefix then (slot, pad), little-endian.
    if ones:
        slots.add_run(_records(n, 12, ((0, 8, prefix), (8, 1, b"\x01" * n))),
                      _records(n, 16, ((0, 4, _le("I", bids)),)))
    else:
        total = sum(totals)
        slot_no = _le("H", chain.from_iterable(map(range, repeat(1), map(add, totals, repeat(1)))))
        slot_bids = bids if nslots is None else chain.from_iterable(map(repeat, bids, nslots))
        slots.add_run(_records(total, 12, ((0, 8, b"".join(map(mul, prefixes, totals))), (8, 2, slot_no))),
                      _records(total, 16, ((0, 4, _le("I", slot_bids)),)))
    # Master entries: (backend_id 0, count, flags, rev_nat_id, affinity timeout).
    master_cols = [(4, 2, _le("H", totals)), (8, 4, _le("I", revs))]
    if any(timeouts):    # else flags and timeouts stay zero
        master_cols += [(6, 2, _le("H", [t > 0 for t in timeouts])), (12, 4, _le("I", timeouts))]
    masters.add_run(_records(n, 12, ((0, 8, prefix),)), _records(n, 16, master_cols))
    return ukeys


def _take_ids(alloc: IdAllocator, keys: list) -> list[int]:
    got = alloc.take(keys)
    # Some key has an id already (not expected for a new frontend): the sequential way.
    return got if got is not None else [alloc.get(k) for k in keys]


def _ids_of(alloc: IdAllocator, keys: list) -> list[int]:
    try:
        return list(map(alloc.ids.__getitem__, keys))
    except KeyError as exc:
        raise DatapathError(f"socket-LB state is inconsistent: {exc.args[0]!r} is programmed but has no id; "
                            "restart the agent to re-adopt the maps") from None


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
                bks.append(k[:8] + raw[:6])
    return out

def orphan_backends(backends: dict[bytes, bytes],
                    groups: Mapping[FrontendKey, tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]]
                    ) -> list[bytes]:
    """Backend entries no slot names (a sync interrupted between its backend and slot writes):
    nothing reaches them and no id allocator knows their ids, so they are deleted on adoption."""
    named: set[bytes] = set()
    for _, be, _ in groups.values():
        named.update(be)
    return [k for k in backends if k not in named]


def adopt(services: dict[bytes, bytes], backends: dict[bytes, bytes], rev_ids: IdAllocator,
          backend_ids: IdAllocator) -> None:
    """Rebuild the id allocators from pinned map contents (agent restart)."""
    be_raw = {BackendId.unpack(k).id: v for k, v in backends.items()}
    for k, v in services.items():
        key = Lb4Key.unpack(k)
        val = Lb4Service.unpack(v)
        fk = (key.address, key.port, key.proto)
        if key.slot == 0:
            rev_ids.adopt(fk, val.rev_nat_id)
        else:
            raw = be_raw.get(val.backend_id)
            if raw is not None:
                backend_ids.adopt(k[:8] + raw[:6], val.backend_id)
