"""The socket-LB planner's fast path writes exactly what the straightforward planner wrote: the
reference below is the planner as it was before it was optimised (kept verbatim), compared byte
for byte over random frontends (weights, drained backends, affinity, protocols, shared backends,
re-plans with changed and removed frontends, so the id allocators' reuse is covered too)."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from bpf.maps import SVC_FLAG_AFFINITY
from mesh.datapath import lbmap
from mesh.datapath.lbmap import BackendKey, FrontendKey, IdAllocator, slot_weights
from mesh.services.model import Backend, Frontend

_SVC_KEY = struct.Struct("<4s2sBBHH")
_SVC_VAL = struct.Struct("<IHHII")
_BE_KEY = struct.Struct("<I")
_BE_VAL = struct.Struct("<4s2sBB")
_PORT = struct.Struct("!H")


def ref_plan_frontend(f: Frontend, fk: FrontendKey, rev_ids: IdAllocator, backend_ids: IdAllocator,
                  max_slots: int = 256) -> tuple[dict[bytes, bytes], dict[bytes, bytes], list[BackendKey]]:
    """One frontend's entries: (ost_lb4_svc entries, ost_lb4_backend entries, backend keys).
    Packs bytes directly (the layouts of the bpf.maps codecs, which the tests compare). Backend
    keys are the frontend's key prefix + backend ip + port (they were (fk, ip, port) tuples)."""
    rev = rev_ids.ids.get(fk) or rev_ids.get(fk)
    vip, vport, proto = socket.inet_aton(f.vip), _PORT.pack(f.port), fk[2]
    weights = [b.weight for b in f.backends]
    slots_per = weights if all(w == 1 for w in weights) else slot_weights(weights, max_slots)
    svc: dict[bytes, bytes] = {}
    be: dict[bytes, bytes] = {}
    bks: list[BackendKey] = []
    slot = 0
    be_ids = backend_ids.ids
    for b, n in zip(f.backends, slots_per):
        if n == 0:
            continue
        bk = _SVC_KEY.pack(vip, vport, proto, 0, 0, 0)[:8] + socket.inet_aton(b.ip) + _PORT.pack(b.port)
        bid = be_ids.get(bk) or backend_ids.get(bk)
        bks.append(bk)
        be[_BE_KEY.pack(bid)] = _BE_VAL.pack(socket.inet_aton(b.ip), _PORT.pack(b.port), proto, 0)
        sval = _SVC_VAL.pack(bid, 0, 0, 0, 0)
        for _ in range(n):
            slot += 1
            svc[_SVC_KEY.pack(vip, vport, proto, 0, slot, 0)] = sval
    flags = SVC_FLAG_AFFINITY if f.affinity_timeout > 0 else 0
    svc[_SVC_KEY.pack(vip, vport, proto, 0, 0, 0)] = _SVC_VAL.pack(0, slot, flags, rev, f.affinity_timeout)
    return svc, be, bks


def random_frontends(rng: random.Random, n: int, net: int = 96) -> list[Frontend]:
    out = []
    for i in range(n):
        nb = rng.choice([0, 1, 1, 2, 3, 3, 5, 12])
        mode = rng.random()
        backends = []
        for j in range(nb):
            # Small address pool: backends shared between frontends and repeated ports.
            ip = f"10.1.{rng.randrange(4)}.{rng.randrange(1, 20)}"
            if mode < 0.5:
                w = 1
            elif mode < 0.8:
                w = rng.choice([0, 1, 2, 5, 100])
            else:
                w = rng.choice([1, 1000, 7])
            backends.append(Backend(ip, rng.choice([8080, 8443, 53 + j]), w))
        out.append(Frontend(f"10.{net}.{i // 200}.{i % 200 + 1}", rng.choice([80, 443, 53, 65535]),
                            rng.choice(["TCP", "TCP", "UDP", "SCTP"]), tuple(backends),
                            rng.choice([0, 0, 60, 10800]), f"ns/svc{i}"))
    return out


def ref_plan(frontends, rev_ids, backend_ids, max_slots=256):
    services, backends, keep = {}, {}, set()
    indexed = {lbmap.frontend_key(f): f for f in frontends}
    for fk, f in indexed.items():
        svc, be, bks = ref_plan_frontend(f, fk, rev_ids, backend_ids, max_slots)
        services.update(svc)
        backends.update(be)
        keep.update(bks)
    rev_ids.retain(set(indexed))
    backend_ids.retain(keep)
    return services, backends


def alloc_state(a: IdAllocator):
    return (dict(a.ids), list(a._free), a._next)


@pytest.mark.parametrize("seed", range(6))
def test_plan_frontend_matches_reference_byte_for_byte(seed):
    rng = random.Random(seed)
    max_slots = rng.choice([4, 16, 256])
    fast = (IdAllocator(limit=0xFFFF), IdAllocator())
    ref = (IdAllocator(limit=0xFFFF), IdAllocator())
    fronts = random_frontends(rng, 200)
    for rnd in range(4):
        for f in fronts:
            fk = lbmap.frontend_key(f)
            got = lbmap.plan_frontend(f, fk, *fast, max_slots)
            want = ref_plan_frontend(f, fk, *ref, max_slots)
            # Same entries, same insertion order (the batch the kernel receives is in this order).
            assert list(got[0].items()) == list(want[0].items())
            assert list(got[1].items()) == list(want[1].items())
            assert got[2] == want[2]
        assert alloc_state(fast[0]) == alloc_state(ref[0])
        assert alloc_state(fast[1]) == alloc_state(ref[1])
        # Next round: some removed (ids released and reused), some changed, some new.
        keep = [f for f in fronts if rng.random() > 0.2]
        keep = [Frontend(f.vip, f.port, f.protocol, f.backends[::-1], f.affinity_timeout) if rng.random() < 0.2
                else f for f in keep]
        fronts = keep + random_frontends(rng, 50, net=97 + rnd)
        st_f = lbmap.plan(fronts, *fast, max_slots)
        st_r = ref_plan(fronts, *ref, max_slots)
        assert st_f.services == st_r[0] and st_f.backends == st_r[1]
        assert alloc_state(fast[0]) == alloc_state(ref[0])
        assert alloc_state(fast[1]) == alloc_state(ref[1])


def test_plan_frontend_many_slots_beyond_precomputed_suffixes():
    # 2,000 backends of weight 1: slot numbers past the precomputed table are packed on the fly.
    f = Frontend("10.96.0.1", 80, "TCP", tuple(Backend(f"10.2.{i // 250}.{i % 250 + 1}", 80) for i in range(2000)))
    fk = lbmap.frontend_key(f)
    got = lbmap.plan_frontend(f, fk, IdAllocator(), IdAllocator())
    want = ref_plan_frontend(f, fk, IdAllocator(), IdAllocator())
    assert list(got[0].items()) == list(want[0].items()) and got[1] == want[1]


def test_plan_frontend_bad_port_raises_like_the_reference():
    f = Frontend("10.96.0.1", 70000, "TCP", (Backend("10.0.0.1", 80),))
    fk = lbmap.frontend_key(f)
    with pytest.raises(struct.error):
        ref_plan_frontend(f, fk, IdAllocator(), IdAllocator())
    with pytest.raises(struct.error):
        lbmap.plan_frontend(f, fk, IdAllocator(), IdAllocator())


# ---- plan_sync: the bulk planner for Datapath.sync_services ----

def ref_fresh_plan(new, rev_ids, be_ids, max_slots):
    """A load into empty maps as the datapath planned it before plan_fresh: frontend after
    frontend with the reference planner, batches split into slots and masters."""
    slots, masters, be_up = {}, {}, {}
    for fk, f in new.items():
        svc, be, _ = ref_plan_frontend(f, fk, rev_ids, be_ids, max_slots)
        for k, v in svc.items():
            (masters if k[8:10] == b"\0\0" else slots)[k] = v
        be_up.update(be)
    return slots, masters, be_up


def _fresh_cases(rng: random.Random) -> list[list[Frontend]]:
    one = [Frontend(f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", (Backend("10.250.0.2", 8080),), 0, f"d/s{i}")
           for i in range(300)]
    many = [Frontend("10.97.0.1", 80, "TCP", tuple(Backend(f"10.2.{i // 250}.{i % 250 + 1}", 80) for i in range(1100)))]
    dup = [Frontend("10.98.0.1", 53, "UDP", (Backend("10.1.0.1", 53), Backend("10.1.0.1", 53), Backend("10.1.0.2", 53)),
                    60),
           Frontend("10.98.0.2", 53, "UDP", (Backend("10.1.0.1", 53, 3), Backend("10.1.0.1", 53, 0),
                                             Backend("10.1.0.1", 53, 6)))]
    empty = [Frontend("10.99.0.1", 80, "TCP", (), 10800), Frontend("10.99.0.2", 80, "TCP", (Backend("10.1.0.1", 1, 0),))]
    return [one, random_frontends(rng, 300), one + many + dup + empty + random_frontends(rng, 100, net=120),
            dup, empty, []]


@pytest.mark.parametrize("seed", range(4))
def test_a_load_into_empty_maps_is_the_sequential_plan_byte_for_byte(seed):
    # The column-wise planner against the frontend-by-frontend reference: the same entries, in
    # the same batch order, and the same ids (also when ids come from the free list, as after
    # sync_services([])) - all-ones, weighted, drained, duplicate backends, > 1024 slots.
    rng = random.Random(seed)
    max_slots = rng.choice([4, 256])
    for fronts in _fresh_cases(rng):
        new = lbmap.index_frontends(fronts)
        fast = (IdAllocator(limit=0xFFFF), IdAllocator())
        ref = (IdAllocator(limit=0xFFFF), IdAllocator())
        if seed % 2:
            for a in (*fast, *ref):
                a._free, a._next = rng.sample(range(1, 5000), 400), 5000
            ref = tuple(IdAllocator(dict(a.ids), a.limit, list(a._free), a._next) for a in fast)
        p = lbmap.plan_sync({}, new, *fast, max_slots)
        slots, masters, be_up = ref_fresh_plan(new, *ref, max_slots)
        assert list(p.slots.items()) == list(slots.items())
        assert list(p.masters.items()) == list(masters.items())
        assert list(p.be_up.items()) == list(be_up.items())
        assert p.changed == list(new) and not (p.removed or p.svc_del or p.be_del)
        assert alloc_state(fast[0]) == alloc_state(ref[0])
        assert alloc_state(fast[1]) == alloc_state(ref[1])


def test_id_allocator_take_hands_out_what_get_would():
    a, b = IdAllocator(limit=20), IdAllocator(limit=20)
    for x in (a, b):
        x._free, x._next = [7, 3, 9], 12
    keys = [f"k{i}" for i in range(6)]
    assert a.take(keys) == [b.get(k) for k in keys] == [9, 3, 7, 12, 13, 14]
    assert alloc_state(a) == alloc_state(b)
    assert a.take(["k1", "new"]) is None and alloc_state(a) == alloc_state(b)   # k1 has an id
    from mesh.errors import DatapathError
    with pytest.raises(DatapathError, match="out of ids"):
        a.take([f"x{i}" for i in range(7)])
    assert alloc_state(a) == alloc_state(b)            # nothing taken
    assert a.take([f"x{i}" for i in range(6)]) == list(range(15, 21))
    # release_many is release() key after key (keys without an id ignored).
    c, d = IdAllocator(dict(a.ids), a.limit, list(a._free), a._next), IdAllocator(dict(a.ids), a.limit, list(a._free), a._next)
    gone = ["x3", "k0", "nope", "x0", "k5"]
    c.release_many(gone)
    for k in gone:
        d.release(k)
    assert alloc_state(c) == alloc_state(d) and c._free[-4:] == [18, 9, 15, 14]


class _Model:
    """The two maps as a dict each, changed by applying a plan the way the datapath does."""

    def __init__(self):
        self.svc, self.be = {}, {}

    def apply(self, p):
        self.be.update(p.be_up.items())
        self.svc.update(p.slots.items())
        self.svc.update(p.masters.items())
        for k in p.svc_del:
            del self.svc[k]
        for k in p.be_del:
            del self.be[k]


def _want(new, rev_ids, be_ids, max_slots):
    """What the maps must hold: every frontend planned by the reference with the allocators
    as the sync left them (each id it needs is there, so nothing is allocated)."""
    before = (alloc_state(rev_ids), alloc_state(be_ids))
    svc, be, keep_be = {}, {}, set()
    for fk, f in new.items():
        s, b, bks = ref_plan_frontend(f, fk, rev_ids, be_ids, max_slots)
        svc.update(s)
        be.update(b)
        keep_be.update(bks)
    assert (alloc_state(rev_ids), alloc_state(be_ids)) == before, "an id was missing"
    assert set(rev_ids.ids) == set(new) and set(be_ids.ids) == keep_be, "ids held for nothing"
    return svc, be


def _mutate(rng: random.Random, f: Frontend) -> Frontend:
    r = rng.random()
    if r < 0.3:
        return Frontend(f.vip, f.port, f.protocol, f.backends[1:], f.affinity_timeout, f.service)
    if r < 0.5:
        return Frontend(f.vip, f.port, f.protocol, f.backends, 0 if f.affinity_timeout else 30, f.service)
    if r < 0.7:
        return Frontend(f.vip, f.port, f.protocol,
                        tuple(Backend(b.ip, b.port, b.weight + 1) for b in f.backends), f.affinity_timeout)
    # An equal but distinct object: skipped like the same object.
    return Frontend(f.vip, f.port, f.protocol, tuple(f.backends), f.affinity_timeout, f.service)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_syncs_write_only_what_changed_and_keep_ids(seed):
    rng = random.Random(100 + seed)
    max_slots = rng.choice([8, 256])
    fe: dict = {}
    ids = (IdAllocator(limit=0xFFFF), IdAllocator())
    model = _Model()
    fronts = random_frontends(rng, 150)
    for rnd in range(6):
        new = lbmap.index_frontends(fronts)
        old_rev, old_be = dict(ids[0].ids), dict(ids[1].ids)
        before_svc, before_be = dict(model.svc), dict(model.be)
        p = lbmap.plan_sync(fe, new, *ids, max_slots)
        model.apply(p)
        want_svc, want_be = _want(new, *ids, max_slots)
        assert model.svc == want_svc and model.be == want_be
        # Only what differs is written or deleted.
        up = {**p.slots.as_dict(), **p.masters.as_dict()}
        assert up == {k: v for k, v in want_svc.items() if before_svc.get(k) != v}
        assert p.be_up.as_dict() == {k: v for k, v in want_be.items() if before_be.get(k) != v}
        assert sorted(p.svc_del) == sorted(set(before_svc) - set(want_svc))
        assert sorted(p.be_del) == sorted(set(before_be) - set(want_be))
        # Fill change and rollback values without a mirror: new keys counted, overwritten ones
        # remembered with what they held.
        assert p.svc_added == len(set(up) - set(before_svc))
        assert p.be_added == len(set(p.be_up.keys) - set(before_be))
        assert p.overwritten_svc == {k: before_svc[k] for k in up if k in before_svc}
        assert p.overwritten_be == {k: before_be[k] for k in p.be_up.keys if k in before_be}
        assert all(k[8:10] != b"\0\0" for k in p.slots.keys) and all(k[8:10] == b"\0\0" for k in p.masters.keys)
        # Deletions master entries first; the removed frontends' share listed apart.
        flags = [k[8:10] == b"\0\0" for k in p.svc_del]
        assert flags == sorted(flags, reverse=True)
        gone = set(p.removed)
        assert set(p.removed_svc) == {k for k in before_svc if (socket.inet_ntoa(k[:4]), int.from_bytes(k[4:6], "big"), k[6]) in gone}
        # Ids of what stays are stable; a freed id is not handed out again in the same sync.
        assert all(ids[0].ids[fk] == i for fk, i in old_rev.items() if fk in ids[0].ids)
        assert all(ids[1].ids[bk] == i for bk, i in old_be.items() if bk in ids[1].ids)
        freed_rev = {i for fk, i in old_rev.items() if fk not in ids[0].ids}
        freed_be = {i for bk, i in old_be.items() if bk not in ids[1].ids}
        assert not freed_rev & {ids[0].ids[fk] for fk in ids[0].ids if fk not in old_rev}
        assert not freed_be & {ids[1].ids[bk] for bk in ids[1].ids if bk not in old_be}
        assert len(set(ids[0].ids.values())) == len(ids[0].ids) and len(set(ids[1].ids.values())) == len(ids[1].ids)
        if rnd:
            assert p.removed and len(p.changed) < len(new)   # the test covers all three kinds
        unchanged = [fk for fk, f in new.items() if fk in fe and (fe[fk] is f or fe[fk] == f)]
        assert set(p.changed) == set(new) - set(unchanged)
        fe = new                                            # what the datapath keeps
        # Next round: drop some, change some, keep the rest (same objects), add new ones.
        fronts = [_mutate(rng, f) if rng.random() < 0.3 else f for f in fronts if rng.random() > 0.15]
        fronts += random_frontends(rng, 30, net=110 + rnd)
    # Adopted state (after an agent restart) is always planned anew; what is equal is not written.
    svc_all, be_all = dict(model.svc), dict(model.be)
    adopted = {fk: lbmap.AdoptedEntries(s, b, bks) for fk, (s, b, bks) in lbmap.group_by_frontend(svc_all, be_all).items()}
    rev2, be2 = IdAllocator(limit=0xFFFF), IdAllocator()
    lbmap.adopt(svc_all, be_all, rev2, be2)
    new = lbmap.index_frontends(list(fe.values()))        # the frontends last synced, as new objects
    p = lbmap.plan_sync(adopted, new, rev2, be2, max_slots)
    assert set(p.changed) == set(new) and not p.removed
    assert not (p.slots or p.masters or p.be_up or p.svc_del or p.be_del)


def test_a_service_replacing_another_keeps_its_backend():
    # One sync removes A and adds B: B must not get A's freed ids, or A's deletions would
    # delete B's fresh backend entry (B's VIP would then have a slot naming no backend).
    ids = (IdAllocator(limit=0xFFFF), IdAllocator())
    a = Frontend("10.96.0.1", 80, "TCP", (Backend("10.1.0.1", 80),))
    b = Frontend("10.96.0.2", 80, "TCP", (Backend("10.1.0.2", 80),))
    model = _Model()
    fe = lbmap.index_frontends([a])
    model.apply(lbmap.plan_sync({}, fe, *ids))
    p = lbmap.plan_sync(fe, lbmap.index_frontends([b]), *ids)
    assert not set(p.be_up.keys) & set(p.be_del) and not set(p.slots.keys + p.masters.keys) & set(p.svc_del)
    model.apply(p)
    slot = next(v for k, v in model.svc.items() if k[8:10] != b"\0\0")
    assert slot[:4] in model.be and socket.inet_ntoa(model.be[slot[:4]][:4]) == "10.1.0.2"
    # The freed ids are reused by the next sync.
    p = lbmap.plan_sync(lbmap.index_frontends([b]), lbmap.index_frontends([b, a]), *ids)
    assert sorted(ids[1].ids.values()) == [1, 2] and sorted(ids[0].ids.values()) == [1, 2]


@pytest.mark.parametrize("bad, message", [
    (Frontend("10.96.0.1", 70000, "TCP", (Backend("10.1.0.1", 80),), 0, "ns/a"),
     "frontend 10.96.0.1:70000/TCP \\(service ns/a\\): port 70000 is outside 0..65535"),
    (Frontend("10.96.0.1", 80, "TCP", (Backend("10.1.0.1", 80), Backend("10.1.0.2", -1)), 0, "ns/a"),
     "frontend 10.96.0.1:80/TCP \\(service ns/a\\): backend 10.1.0.2 port -1 is outside 0..65535"),
    (Frontend("10.96.0.1", 80, "TCP", (Backend("10.1.0.1", 80),), -5, "ns/a"),
     "affinity timeout -5 is outside 0..4294967295"),
])
def test_a_fresh_frontend_with_a_field_the_map_cannot_hold_is_named(bad, message):
    from mesh.errors import DatapathError
    ok = Frontend("10.96.9.9", 80, "TCP", (Backend("10.1.0.1", 80),))
    with pytest.raises(DatapathError, match=message):
        lbmap.plan_sync({}, lbmap.index_frontends([ok, bad]), IdAllocator(limit=0xFFFF), IdAllocator())


def test_index_frontends_conflict_and_unknown_protocol():
    from mesh.errors import ConflictError, DatapathError
    a = Frontend("10.96.0.1", 80, "TCP", (), 0, "ns/a")
    with pytest.raises(ConflictError, match="ns/b: 10.96.0.1:80/TCP is already the frontend of service ns/a"):
        lbmap.index_frontends([a, Frontend("10.96.0.1", 80, "TCP", (), 0, "ns/b")])
    assert len(lbmap.index_frontends([a, Frontend("10.96.0.1", 80, "UDP")])) == 2
    with pytest.raises(DatapathError, match="unknown protocol 'ICMP'"):
        lbmap.index_frontends([Frontend("10.96.0.1", 80, "ICMP")])


def test_gc_paused_leaves_gc_as_it_found_it():
    import gc
    assert gc.isenabled()
    with lbmap.gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with lbmap.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# ---- the real maps (root): batch writes and what sync_services leaves in them ----

@pytest.fixture
def live_datapath():
    import os
    import secrets
    import shutil
    import tempfile

    from mesh import kernel
    from mesh.datapath import Datapath, DatapathConfig

    tag = secrets.token_hex(3)
    cg = os.path.join(kernel.cgroup2_mount(), f"ostium-test-lbfast-{tag}")
    tmp = tempfile.mkdtemp(prefix="ostium-test-lbfast-")
    kernel.mount_bpffs()
    os.makedirs(cg)
    dp = Datapath(DatapathConfig(cgroup_root=cg, pin_dir=f"/sys/fs/bpf/ostium-test-lbfast-{tag}",
                                 build_dir="/tmp/ostium-test-bpf-build"))
    try:
        dp.start()
        yield dp
    finally:
        dp.purge()
        os.rmdir(cg)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.root
def test_batch_writes_and_synced_maps_hold_what_the_reference_planner_says(live_datapath):
    from mesh.errors import DatapathError

    dp = live_datapath
    rng = random.Random(7)
    fronts = random_frontends(rng, 300)
    dp.sync_services(fronts)
    svc_map, be_map = dp._maps["ost_lb4_svc"], dp._maps["ost_lb4_backend"]
    # What is in the kernel equals the previous planner's full plan with fresh allocators
    # (sync_services from empty allocates ids in the same order).
    want_svc, want_be = ref_plan(fronts, IdAllocator(limit=0xFFFF), IdAllocator())
    assert dict(svc_map.items()) == want_svc
    assert dict(be_map.items()) == want_be
    dp.sync_services([])
    assert not dict(svc_map.items()) and not dict(be_map.items())

    # update_batch_dict / update_batch_raw on the real backend map.
    entries = {_BE_KEY.pack(i): _BE_VAL.pack(socket.inet_aton(f"10.9.0.{i}"), _PORT.pack(80), 6, 0)
               for i in range(1, 51)}
    be_map.update_batch_dict(entries)
    assert dict(be_map.items()) == entries
    with pytest.raises(DatapathError, match="not 2 entries of 4\\+8 bytes"):
        be_map.update_batch_raw(b"\0" * 8, b"\0" * 15, 2)
    # Batch delete in order, skipping keys that are not there (the kernel stops at them).
    keys = list(entries)
    be_map.delete_batch([keys[0], _BE_KEY.pack(999), keys[1], _BE_KEY.pack(998), *keys[2:40]])
    assert dict(be_map.items()) == {k: entries[k] for k in keys[40:]}
    with pytest.raises(DatapathError, match="are not 2 keys of 4 bytes"):
        be_map.delete_batch_raw(b"\0" * 7, 2)
    be_map.delete_batch(keys[40:] + [_BE_KEY.pack(997)])
    assert not dict(be_map.items())


def _svc_dump(dp):
    return dict(dp._maps["ost_lb4_svc"].items()), dict(dp._maps["ost_lb4_backend"].items())


@pytest.mark.root
def test_a_service_replacing_another_in_one_sync_has_its_backend_in_the_kernel(live_datapath):
    dp = live_datapath
    a = Frontend("10.96.0.1", 80, "TCP", (Backend("10.1.0.1", 80),), 0, "d/a")
    b = Frontend("10.96.0.2", 80, "TCP", (Backend("10.1.0.2", 80),), 0, "d/b")
    dp.sync_services([a])
    st = dp.sync_services([b])
    svc, be = _svc_dump(dp)
    slot = next(v for k, v in svc.items() if k[8:10] != b"\0\0")
    assert socket.inet_ntoa(be[slot[:4]][:4]) == "10.1.0.2"
    assert (st["service_entries"], st["backends"]) == (len(svc), len(be)) == (2, 1)


@pytest.mark.root
def test_a_write_failing_half_way_leaves_the_maps_as_they_were(live_datapath, monkeypatch):
    from mesh.errors import DatapathError

    dp = live_datapath
    rng = random.Random(11)
    first = random_frontends(rng, 120)
    dp.sync_services(first)
    before = _svc_dump(dp)
    # Changed, removed and new frontends in one sync, whose master entries fail after the
    # kernel took them all (the worst case): everything written is put back.
    second = [_mutate(rng, f) for f in first[:60]] + random_frontends(rng, 40, net=120)
    svc_map = dp._maps["ost_lb4_svc"]
    real = type(svc_map).update_batch_raw
    calls = []

    def failing(self, keys, values, count):
        calls.append(count)
        real(self, keys, values, count)
        if self is svc_map and len(calls) == 3:     # backends, slots, then masters
            raise DatapathError("injected failure")
        return True

    monkeypatch.setattr(type(svc_map), "update_batch_raw", failing)
    with pytest.raises(DatapathError, match="injected"):
        dp.sync_services(second)
    monkeypatch.undo()
    assert _svc_dump(dp) == before
    again = dp.sync_services(first)
    assert again["written"] == 0 and again["deleted"] == 0
    st = dp.sync_services(second)
    svc, be = _svc_dump(dp)
    want_svc, want_be = {}, {}
    for fk, f in lbmap.index_frontends(second).items():
        s_, b_, _ = ref_plan_frontend(f, fk, dp._rev_ids, dp._backend_ids)
        want_svc.update(s_)
        want_be.update(b_)
    assert (svc, be) == (want_svc, want_be)
    assert (st["service_entries"], st["backends"]) == (len(svc), len(be))


@pytest.mark.root
def test_adoption_drops_backend_entries_no_slot_names(live_datapath):
    from mesh.datapath import Datapath

    dp = live_datapath
    fronts = random_frontends(random.Random(5), 50)
    dp.sync_services(fronts)
    svc, be = _svc_dump(dp)
    # What a sync killed between its backend and slot writes leaves behind.
    orphan = _BE_KEY.pack(60000)
    dp._maps["ost_lb4_backend"].update(orphan, _BE_VAL.pack(socket.inet_aton("10.9.9.9"), _PORT.pack(80), 6, 0))
    dp.close()
    dp2 = Datapath(dp.config)
    try:
        report = dp2.start()
        assert report.adopted_services == len(lbmap.index_frontends(fronts))
        assert _svc_dump(dp2) == (svc, be)
        st = dp2.sync_services(fronts)
        assert st["written"] == 0 and st["deleted"] == 0
        assert (st["service_entries"], st["backends"]) == (len(svc), len(be))
        assert dp2.sync_services([])["deleted"] == len(svc) + len(be)
        assert _svc_dump(dp2) == ({}, {})
    finally:
        dp2.close()
