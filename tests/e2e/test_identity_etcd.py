"""The etcd identity allocator against a real etcd (Debian etcd-server), two or three "nodes" sharing it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request

import pytest

from mesh.errors import IdentityError
from mesh.identity.allocator import EventKind, IdRange
from mesh.identity.etcd import EtcdAllocator
from mesh.identity.labels import security_labels

try:  # `python -m pytest` from the repo root has it on sys.path; the `pytest` script only has tests/
    from tests.etcd_fixture import etcd_server  # noqa: F401  (fixture)
except ModuleNotFoundError:
    from etcd_fixture import etcd_server  # noqa: F401

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]

WEB = security_labels({"app": "web"}, "default")
DB = security_labels({"app": "db"}, "default")
API = security_labels({"app": "api", "tier": "backend"}, "prod")


async def eventually(check, timeout: float = 10.0, interval: float = 0.1):
    """Poll an async `check()` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met after {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def nodes(etcd_server):  # noqa: F811
    """open_node(name, **kw) → an EtcdAllocator on the test's etcd; all closed at teardown."""
    opened: list[EtcdAllocator] = []

    async def open_node(name: str, **kw) -> EtcdAllocator:
        kw.setdefault("gc_interval", 0)  # tests run GC themselves
        kw.setdefault("lease_ttl", 5)
        a = await EtcdAllocator.open([etcd_server.client_url], name, **kw)
        opened.append(a)
        return a
    try:
        yield open_node
    finally:
        for a in opened:
            await a.close(revoke_lease=True) if etcd_server.running else await a.close()


def _etcd_post(server, path: str, body: dict) -> dict:
    req = urllib.request.Request(server.client_url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _etcd_keys(server, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    resp = _etcd_post(server, "/v3/kv/range", {"key": base64.b64encode(prefix.encode()).decode(),
                                                "range_end": base64.b64encode(end.encode()).decode(),
                                                "keys_only": True})
    return [base64.b64decode(kv["key"]).decode() for kv in resp.get("kvs", [])]


async def test_two_nodes_get_the_same_identity_for_the_same_labels(nodes):
    a, b = await nodes("node-a"), await nodes("node-b")
    web_a = await a.allocate(WEB, "ep1")
    web_b = await b.allocate(WEB, "ep7")
    db_b = await b.allocate(DB, "ep8")
    assert web_a.id == web_b.id >= 256
    assert db_b.id != web_a.id
    for node in (a, b):
        listed = {i.id: i for i in await node.list()}
        assert listed[web_a.id].labels == WEB
        assert listed[web_a.id].owners == ("node-a/ep1", "node-b/ep7")
        assert listed[db_b.id].references == 1
        assert listed[2].labels == {"reserved:world": ""}
    assert (await a.lookup(DB)).id == db_b.id
    # A node joining later starts from every identity the others made.
    late = await nodes("node-late")
    snapshot = []
    async for ev in late.watch():
        if ev.kind is EventKind.SYNCED:
            break
        snapshot.append((ev.identity.id, ev.identity.labels))
    assert (web_a.id, WEB) in snapshot and (db_b.id, DB) in snapshot and (1, {"reserved:host": ""}) in snapshot


async def test_a_node_sees_identities_other_nodes_allocate(nodes):
    a, b = await nodes("node-a"), await nodes("node-b")
    events = b.watch()
    async for ev in events:
        if ev.kind is EventKind.SYNCED:
            break
    web = await a.allocate(WEB, "ep1")
    ev = await asyncio.wait_for(events.__anext__(), 5)
    assert (ev.kind, ev.identity.id, ev.identity.labels) == (EventKind.UPSERT, web.id, WEB)
    await a.release(WEB, "ep1")
    ev = await asyncio.wait_for(events.__anext__(), 5)
    assert (ev.kind, ev.identity.id) == (EventKind.DELETE, web.id)
    await events.aclose()


async def test_racing_nodes_end_with_one_number_per_label_set(nodes):
    # A narrow range makes the nodes also collide on numbers for different labels.
    rng = IdRange(256, 300)
    a, b = await nodes("node-a", id_range=rng), await nodes("node-b", id_range=rng)
    label_sets = [security_labels({"app": f"svc{i}"}, "default") for i in range(8)]
    results = await asyncio.gather(*(
        node.allocate(lbl, f"ep{i}") for i, lbl in enumerate(label_sets) for node in (a, b)))
    ids = [r.id for r in results]
    assert ids[0::2] == ids[1::2], "both nodes must agree on every label set's number"
    assert len(set(ids)) == len(label_sets), "different label sets must get different numbers"
    listed = {i.id: i for i in await a.list() if not i.reserved}
    assert len(listed) == len(label_sets)
    assert all(i.references == 2 for i in listed.values())


async def test_release_frees_only_after_the_last_node_lets_go(etcd_server, nodes):  # noqa: F811
    a, b = await nodes("node-a"), await nodes("node-b")
    web = await a.allocate(WEB, "ep1")
    await a.allocate(WEB, "ep2")
    await b.allocate(WEB, "ep9")
    assert await a.release(WEB, "ep1") is False
    assert await a.release(web.id, "ep2") is False  # node-b still holds it
    assert (await b.get(web.id)).owners == ("node-b/ep9",)
    assert await b.release(WEB, "ep9") is True
    assert await a.get(web.id) is None and await b.lookup(WEB) is None
    assert _etcd_keys(etcd_server, "ostium/identities/") == []
    assert await a.release(WEB, "ep1") is False  # releasing twice is harmless


async def test_a_dead_nodes_references_expire_and_gc_frees_what_nobody_else_holds(etcd_server, nodes):  # noqa: F811
    a = await nodes("node-a")
    dead = await nodes("node-dead", lease_ttl=2)
    shared = await a.allocate(WEB, "ep1")
    await dead.allocate(WEB, "ep2")
    only_dead = await dead.allocate(DB, "ep3")
    assert await a.gc() == []  # everything is referenced
    await dead.close()  # the node dies: no more keepalives, no revoke

    async def dead_refs_gone():
        return not any(k.endswith("/node-dead") for k in _etcd_keys(etcd_server, "ostium/identities/refs/"))
    await eventually(dead_refs_gone, timeout=15)
    assert await a.gc() == [only_dead.id]
    assert await a.get(only_dead.id) is None
    kept = await a.get(shared.id)
    assert kept is not None and kept.owners == ("node-a/ep1",)
    # The freed labels can be allocated again by anyone.
    again = await a.allocate(DB, "ep4")
    assert (await a.get(again.id)).labels == DB


async def test_a_lost_lease_is_renewed_and_references_rewritten(etcd_server, nodes):  # noqa: F811
    a = await nodes("node-a", lease_ttl=2)
    web = await a.allocate(WEB, "ep1")
    lease = a._lease
    [ref_key] = [k for k in _etcd_keys(etcd_server, "ostium/identities/refs/") if k.endswith("/node-a")]
    _etcd_post(etcd_server, "/v3/lease/revoke", {"ID": str(lease)})  # e.g. expired while we were partitioned
    assert ref_key not in _etcd_keys(etcd_server, "ostium/identities/refs/")

    async def ref_back():
        return a.lease_renewals >= 1 and ref_key in _etcd_keys(etcd_server, "ostium/identities/refs/")
    await eventually(ref_back, timeout=10)
    assert a._lease != lease
    assert (await a.get(web.id)).owners == ("node-a/ep1",)
    assert await a.gc() == []


async def test_an_etcd_restart_loses_nothing_and_the_allocator_reconnects(etcd_server, nodes):  # noqa: F811
    a, b = await nodes("node-a"), await nodes("node-b")
    web = await a.allocate(WEB, "ep1")
    db = await b.allocate(DB, "ep2")
    await b.allocate(WEB, "ep3")
    before = [(i.id, i.labels, i.owners) for i in await a.list()]
    events = b.watch()
    async for ev in events:
        if ev.kind is EventKind.SYNCED:
            break

    etcd_server.stop()
    # An allocation issued while etcd is down waits (retrying) and completes once it is back.
    pending = asyncio.create_task(a.allocate(API, "ep4"))
    await asyncio.sleep(0)  # let it start against the stopped etcd (it retries; nothing depends on timing)
    await asyncio.to_thread(etcd_server.start)

    api = await asyncio.wait_for(pending, 15)
    after = [(i.id, i.labels, i.owners) for i in await a.list()]
    assert [x for x in after if x[0] != api.id] == before
    assert (await b.lookup(WEB)).id == web.id and (await b.get(db.id)).labels == DB
    # node-b's watch reconnected and reports the identity created after the restart.
    ev = await asyncio.wait_for(events.__anext__(), 10)
    assert (ev.kind, ev.identity.id, ev.identity.labels) == (EventKind.UPSERT, api.id, API)
    await events.aclose()
    # Leases survived too: GC frees nothing.
    assert await b.gc() == []


async def test_exhausted_range_is_a_clear_error(nodes):
    a = await nodes("node-a", id_range=IdRange(256, 257))
    await a.allocate(WEB, "o")
    await a.allocate(DB, "o")
    with pytest.raises(IdentityError, match="exhausted"):
        await a.allocate(API, "o")
    assert await a.lookup(API) is None


async def test_unreachable_etcd_fails_with_a_clear_error():
    with pytest.raises(IdentityError, match="etcd unreachable at http://127.0.0.1:9"):
        await EtcdAllocator.open(["http://127.0.0.1:9"], "node-a", request_timeout=0.5)
