"""The embedded (SQLite) identity allocator, against a real SQLite file in a temp dir."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import IdentityError
from mesh.identity.allocator import EventKind, IdRange
from mesh.identity.labels import RESERVED_IDENTITIES, security_labels
from mesh.identity.sqlite import SQLiteAllocator

WEB = security_labels({"app": "web"}, "default")
DB = security_labels({"app": "db"}, "default")
API = security_labels({"app": "api"}, "prod")


@pytest.fixture
async def alloc(tmp_path):
    a = await SQLiteAllocator.open(tmp_path / "identities.db")
    try:
        yield a
    finally:
        await a.close()


async def test_same_labels_get_the_same_identity(alloc):
    a = await alloc.allocate(WEB, "ep1")
    b = await alloc.allocate(dict(reversed(list(WEB.items()))), "ep2")
    assert a.id == b.id
    assert a.id >= 256
    assert b.references == 2 and b.owners == ("ep1", "ep2")


async def test_different_labels_get_different_identities(alloc):
    a = await alloc.allocate(WEB, "ep1")
    b = await alloc.allocate(DB, "ep1")
    assert a.id != b.id
    assert (await alloc.lookup(DB)).id == b.id


async def test_allocating_again_with_the_same_owner_is_idempotent(alloc):
    a = await alloc.allocate(WEB, "ep1")
    again = await alloc.allocate(WEB, "ep1")
    assert again.id == a.id and again.references == 1
    # One release drops the single reference and frees it.
    assert await alloc.release(WEB, "ep1") is True
    assert await alloc.get(a.id) is None


async def test_identity_is_freed_only_when_the_last_reference_goes(alloc):
    a = await alloc.allocate(WEB, "ep1")
    await alloc.allocate(WEB, "ep2")
    assert await alloc.release(a.id, "ep1") is False
    left = await alloc.get(a.id)
    assert left is not None and left.references == 1 and left.owners == ("ep2",)
    assert await alloc.release(WEB, "ep2") is True
    assert await alloc.get(a.id) is None
    assert await alloc.lookup(WEB) is None


async def test_releasing_a_reference_not_held_changes_nothing(alloc):
    a = await alloc.allocate(WEB, "ep1")
    assert await alloc.release(WEB, "someone-else") is False
    assert await alloc.release(DB, "ep1") is False
    assert await alloc.release(4000, "ep1") is False
    assert (await alloc.get(a.id)).references == 1


async def test_reserved_identities_are_always_present_and_never_allocated(alloc):
    listed = {i.id: i for i in await alloc.list()}
    for name, num in RESERVED_IDENTITIES.items():
        assert listed[num].labels == {f"reserved:{name}": ""}
        assert listed[num].reserved
    host = await alloc.allocate({"reserved:host": ""}, "ep1")
    assert host.id == 1
    assert await alloc.release(1, "ep1") is False
    assert (await alloc.get(2)).labels == {"reserved:world": ""}
    assert [i for i in await alloc.list() if not i.reserved] == []
    with pytest.raises(IdentityError, match="reserved"):
        await alloc.allocate({"reserved:made-up": ""}, "ep1")


async def test_bad_labels_and_owners_are_rejected(alloc):
    with pytest.raises(IdentityError, match="empty label set"):
        await alloc.allocate({}, "ep1")
    with pytest.raises(IdentityError, match="contains '=' or ';'"):
        await alloc.allocate({"k8s:a;b": "x"}, "ep1")
    with pytest.raises(IdentityError, match="owner"):
        await alloc.allocate(WEB, "")
    assert [i for i in await alloc.list() if not i.reserved] == []


async def test_a_freed_number_is_reused_after_the_others(tmp_path):
    async with await SQLiteAllocator.open(tmp_path / "i.db", IdRange(256, 258)) as alloc:
        ids = [(await alloc.allocate(lbl, "o")).id for lbl in (WEB, DB, API)]
        assert ids == [256, 257, 258]
        await alloc.release(DB, "o")
        fresh = await alloc.allocate(security_labels({"app": "new"}, "default"), "o")
        assert fresh.id == 257


async def test_exhaustion_raises_a_clear_error_and_changes_nothing(tmp_path):
    async with await SQLiteAllocator.open(tmp_path / "i.db", IdRange(300, 301)) as alloc:
        await alloc.allocate(WEB, "o")
        await alloc.allocate(DB, "o")
        with pytest.raises(IdentityError, match=r"exhausted: all 2 identities 300\.\.301"):
            await alloc.allocate(API, "o")
        assert await alloc.lookup(API) is None
        assert len([i for i in await alloc.list() if not i.reserved]) == 2
        # Existing label sets still resolve while the range is full.
        assert (await alloc.allocate(WEB, "other")).references == 2


async def test_identities_survive_reopening_the_store(tmp_path):
    path = tmp_path / "state" / "identities.db"
    async with await SQLiteAllocator.open(path) as first:
        web = await first.allocate(WEB, "ep1")
        await first.allocate(WEB, "ep2")
        db = await first.allocate(DB, "ep3")
    async with await SQLiteAllocator.open(path) as second:
        assert (await second.lookup(WEB)).id == web.id
        assert (await second.get(web.id)).owners == ("ep1", "ep2")
        assert (await second.allocate(DB, "ep4")).id == db.id
        fresh = await second.allocate(API, "ep5")
        assert fresh.id not in (web.id, db.id)


async def test_concurrent_allocations_of_the_same_labels_get_one_number(tmp_path):
    path = tmp_path / "i.db"
    # Two allocators on one file, as two processes sharing it would be.
    async with await SQLiteAllocator.open(path) as a, await SQLiteAllocator.open(path) as b:
        labels = [WEB, DB, API]
        results = await asyncio.gather(*(
            (a if i % 2 else b).allocate(labels[i % 3], f"owner{i}") for i in range(60)))
        by_labels: dict[str, set[int]] = {}
        for ident in results:
            by_labels.setdefault(ident.key, set()).add(ident.id)
        assert all(len(ids) == 1 for ids in by_labels.values())
        assert len({next(iter(ids)) for ids in by_labels.values()}) == 3
        for lbl in labels:
            assert (await a.lookup(lbl)).references == 20


async def test_watch_gives_a_snapshot_then_changes(alloc):
    web = await alloc.allocate(WEB, "ep1")
    events = alloc.watch()
    snapshot = []
    async for ev in events:
        if ev.kind is EventKind.SYNCED:
            break
        snapshot.append(ev.identity.id)
    assert snapshot == sorted(RESERVED_IDENTITIES.values()) + [web.id]
    db = await alloc.allocate(DB, "ep1")
    await alloc.allocate(DB, "ep2")  # a second reference is not a change
    await alloc.release(WEB, "ep1")
    ev1 = await asyncio.wait_for(events.__anext__(), 2)
    ev2 = await asyncio.wait_for(events.__anext__(), 2)
    assert (ev1.kind, ev1.identity.id, ev1.identity.labels) == (EventKind.UPSERT, db.id, DB)
    assert (ev2.kind, ev2.identity.id) == (EventKind.DELETE, web.id)
    await events.aclose()


async def test_closed_allocator_refuses_work(tmp_path):
    alloc = await SQLiteAllocator.open(tmp_path / "i.db")
    await alloc.close()
    with pytest.raises(IdentityError, match="closed"):
        await alloc.allocate(WEB, "o")


def test_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IdentityError, match="cannot open the identity store"):
        SQLiteAllocator(blocker / "sub" / "identities.db")


def test_identity_range_must_lie_in_the_allocatable_space():
    with pytest.raises(IdentityError, match="256..65535"):
        IdRange(10, 300)
    with pytest.raises(IdentityError):
        IdRange(500, 400)
