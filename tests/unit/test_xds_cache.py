"""Snapshot cache: content versions, validation, change notification."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import ValidationError
from xdsserver.cache import Snapshot, SnapshotCache
from xdsserver.resources import TypeURL, from_dict, pack

CDS = TypeURL.CLUSTER.value


def cluster(name: str, timeout: str = "1s") -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": timeout}


def test_versions_are_content_hashes_whatever_the_input_form():
    as_dict = Snapshot.build({CDS: [cluster("a"), cluster("b")]})
    as_msg = Snapshot.build({CDS: [from_dict(CDS, cluster("b")), pack(from_dict(CDS, cluster("a")))]})
    assert as_dict.version == as_msg.version
    assert as_dict.resources(CDS)["a"].version == as_msg.resources(CDS)["a"].version
    changed = Snapshot.build({CDS: [cluster("a", "2s"), cluster("b")]})
    assert changed.resources(CDS)["a"].version != as_dict.resources(CDS)["a"].version
    assert changed.resources(CDS)["b"].version == as_dict.resources(CDS)["b"].version
    assert changed.type_version(CDS) != as_dict.type_version(CDS)


@pytest.mark.parametrize("resources,message", [
    ({CDS: [cluster("a"), cluster("a")]}, "duplicate resource name 'a'"),
    ({CDS: [{"connect_timeout": "1s"}]}, "resource has no name"),
    ({CDS: [{"name": "a", "no_such_field": 1}]}, "invalid envoy.config.cluster.v3.Cluster"),
    ({TypeURL.LISTENER.value: [pack(from_dict(CDS, cluster("a")))]}, "listed under"),
    ({"type.googleapis.com/no.Such": [{"name": "x"}]}, "unknown resource type"),
])
def test_bad_snapshots_are_rejected_with_a_reason(resources, message):
    with pytest.raises(ValidationError, match=message):
        Snapshot.build(resources)


async def test_set_snapshot_wakes_waiters_and_bumps_generation():
    cache = SnapshotCache()
    assert cache.get_snapshot("n") is None and cache.generation("n") == 0
    waiter = asyncio.create_task(cache.wait_for_change("n", 0, timeout=5))
    await asyncio.sleep(0)                      # let the waiter block
    snap = Snapshot.build({CDS: [cluster("a")]})
    cache.set_snapshot("n", snap)
    assert await waiter == 1
    assert cache.get_snapshot("n") is snap and cache.node_ids() == ["n"]
    cache.clear_snapshot("n")
    assert cache.get_snapshot("n") is None and cache.node_ids() == []


def test_empty_node_id_is_refused():
    with pytest.raises(ValidationError, match="node id"):
        SnapshotCache().set_snapshot("", Snapshot.build({}))


def test_pack_memo_reuses_unchanged_resources_and_stays_bounded():
    from xdsserver.cache import PackMemo

    memo = PackMemo()
    a = Snapshot.build({CDS: [cluster("a"), cluster("b")]}, memo=memo)
    b = Snapshot.build({CDS: [cluster("a"), cluster("b", "9s")]}, memo=memo)
    assert b.resources(CDS)["a"] is a.resources(CDS)["a"]          # reused, not rebuilt
    assert b.resources(CDS)["b"].version != a.resources(CDS)["b"].version
    plain = Snapshot.build({CDS: [cluster("a"), cluster("b", "9s")]})
    assert plain.version == b.version
    for i in range(5):
        Snapshot.build({CDS: [cluster(f"x{i}")]}, memo=memo)
    assert len(memo) <= 2
    with pytest.raises(ValidationError, match="duplicate"):
        Snapshot.build({CDS: [cluster("x4"), cluster("x4")]}, memo=memo)
