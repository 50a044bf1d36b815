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
    Packs bytes directly (the layouts of the bpf.maps codecs, which the tests compare)."""
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
        bk = (fk, b.ip, b.port)
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

class _State:
    """Like the datapath's _FrontendState."""

    __slots__ = ("frontend", "svc", "be", "bks")

    def __init__(self, frontend, svc, be, bks):
        self.frontend, self.svc, self.be, self.bks = frontend, svc, be, bks


def ref_sync_plan(fe, new, rev_ids, be_ids, max_slots):
    """Datapath.sync_services' planning loop as it was written before plan_sync (verbatim
    apart from names), with its slot/master split."""
    svc_up, be_up, svc_del, be_del, new_fe = {}, {}, [], [], {}
    removed = [fk for fk in fe if fk not in new]
    for fk in removed:
        old = fe[fk]
        svc_del.extend(old.svc)
        be_del.extend(old.be)
        rev_ids.release(fk)
        for bk in old.bks:
            be_ids.release(bk)
    for fk, f in new.items():
        old = fe.get(fk)
        if old is not None and old.frontend is not None and (old.frontend is f or old.frontend == f):
            continue
        svc, be, bks = ref_plan_frontend(f, fk, rev_ids, be_ids, max_slots)
        old_svc, old_be = (old.svc, old.be) if old else ({}, {})
        svc_up.update((k, v) for k, v in svc.items() if old_svc.get(k) != v)
        be_up.update((k, v) for k, v in be.items() if old_be.get(k) != v)
        svc_del.extend(k for k in old_svc if k not in svc)
        be_del.extend(k for k in old_be if k not in be)
        if old:
            for bk in set(old.bks) - set(bks):
                be_ids.release(bk)
        new_fe[fk] = (f, svc, be, bks)
    slots = {k: v for k, v in svc_up.items() if k[8:10] != b"\0\0"}
    masters = {k: v for k, v in svc_up.items() if k[8:10] == b"\0\0"}
    return new_fe, removed, slots, masters, be_up, svc_del, be_del


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
def test_plan_sync_matches_the_datapath_loop(seed):
    rng = random.Random(100 + seed)
    max_slots = rng.choice([8, 256])
    fast_fe: dict = {}
    ref_fe: dict = {}
    fast_ids = (IdAllocator(limit=0xFFFF), IdAllocator())
    ref_ids = (IdAllocator(limit=0xFFFF), IdAllocator())
    fronts = random_frontends(rng, 150)
    for rnd in range(5):
        new = lbmap.index_frontends(fronts)
        p = lbmap.plan_sync(fast_fe, new, *fast_ids, max_slots)
        r = ref_sync_plan(ref_fe, new, *ref_ids, max_slots)
        assert p.changed == r[0] and list(p.changed) == list(r[0])
        assert p.removed == r[1]
        # Same batches in the same order.
        assert list(p.slots.items()) == list(r[2].items())
        assert list(p.masters.items()) == list(r[3].items())
        assert list(p.be_up.items()) == list(r[4].items())
        assert p.svc_del == r[5] and p.be_del == r[6]
        assert alloc_state(fast_ids[0]) == alloc_state(ref_ids[0])
        assert alloc_state(fast_ids[1]) == alloc_state(ref_ids[1])
        if rnd:
            assert p.removed and p.changed and len(p.changed) < len(new)   # the test covers all three
        for fe, (changed, removed) in ((fast_fe, (p.changed, p.removed)), (ref_fe, (r[0], r[1]))):
            for fk in removed:
                del fe[fk]
            fe.update({fk: _State(*v) for fk, v in changed.items()})
        # Next round: drop some, change some, keep the rest (same objects), add new ones.
        fronts = [_mutate(rng, f) if rng.random() < 0.3 else f for f in fronts if rng.random() > 0.15]
        fronts += random_frontends(rng, 30, net=110 + rnd)
    # Adopted state (frontend None, after an agent restart) is always planned anew.
    adopted = {fk: _State(None, st.svc, st.be, st.bks) for fk, st in fast_fe.items()}
    new = lbmap.index_frontends(fronts)
    p = lbmap.plan_sync(adopted, new, fast_ids[0].copy(), fast_ids[1].copy(), max_slots)
    r = ref_sync_plan(adopted, new, fast_ids[0].copy(), fast_ids[1].copy(), max_slots)
    assert len(p.changed) == len(new) and p.changed == r[0]
    assert (p.removed, p.slots, p.masters, p.be_up, p.svc_del, p.be_del) == r[1:]
    assert p.svc_up == {**r[2], **r[3]}


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
    be_map.delete_many(list(entries))
