"""ADS server protocol behaviour, with a scripted gRPC client in Envoy's place (no Envoy)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xdsserver.cache import Snapshot, SnapshotCache
from xdsserver.resources import TypeURL
from xdsserver.server import AckState, XdsServer

pytestmark = pytest.mark.timeout(30)

LDS, CDS, RDS = TypeURL.LISTENER.value, TypeURL.CLUSTER.value, TypeURL.ROUTE.value
NODE = "node-a"


def cluster(name: str, timeout: str = "1s") -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": timeout}


def route(name: str) -> dict:
    return {"name": name, "virtual_hosts": [{"name": "v", "domains": ["*"]}]}


def snap(clusters=(), routes=()) -> Snapshot:
    return Snapshot.build({CDS: list(clusters), RDS: list(routes)})


@pytest.fixture
async def xds():
    cache = SnapshotCache()
    server = XdsServer(cache)
    target = await server.start()
    channel = grpc.aio.insecure_channel(target)
    try:
        yield cache, server, channel
    finally:
        await channel.close()
        await server.stop(0)


def stub(channel):
    from envoy.service.discovery.v3 import ads_pb2_grpc
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


def dreq(type_url, *, node=True, subscribe=(), unsubscribe=(), nonce="", error=None, initial=None):
    from envoy.service.discovery.v3 import discovery_pb2
    from google.rpc import status_pb2
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
        initial_resource_versions=initial or {})
    if node:
        req.node.id = NODE
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def sreq(type_url, *, names=(), version="", nonce="", error=None, node=True):
    from envoy.service.discovery.v3 import discovery_pb2
    from google.rpc import status_pb2
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names),
                                         version_info=version, response_nonce=nonce)
    if node:
        req.node.id = NODE
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


async def read(call, timeout=5.0):
    return await asyncio.wait_for(call.read(), timeout)


def names(resp) -> list[str]:
    return sorted(r.name for r in resp.resources)


# ---- Delta ---------------------------------------------------------------------------------


async def test_delta_initial_request_is_answered_even_without_a_snapshot(xds):
    cache, server, ch = xds
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(CDS))
    resp = await read(call)
    assert resp.type_url == CDS and list(resp.resources) == [] and resp.nonce
    await call.write(dreq(CDS, node=False, nonce=resp.nonce))
    cache.set_snapshot(NODE, snap([cluster("a"), cluster("b")]))
    resp = await read(call)
    assert names(resp) == ["a", "b"]
    assert resp.system_version_info == cache.get_snapshot(NODE).version
    await call.write(dreq(CDS, node=False, nonce=resp.nonce))
    await server.wait_applied(NODE, cache.get_snapshot(NODE))
    st = {s.name: s for s in server.resource_status(NODE)}
    assert st["a"].state is AckState.ACKED and st["a"].version_acked == st["a"].version_sent
    assert server.latency_samples()[-1].resources == 2
    call.cancel()


async def test_delta_sends_only_changes_and_removals(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap([cluster("a"), cluster("b")]))
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(CDS))
    resp = await read(call)
    await call.write(dreq(CDS, node=False, nonce=resp.nonce))
    cache.set_snapshot(NODE, snap([cluster("a", "2s"), cluster("c")]))
    resp = await read(call)
    assert names(resp) == ["a", "c"] and list(resp.removed_resources) == ["b"]
    await call.write(dreq(CDS, node=False, nonce=resp.nonce))
    await server.wait_applied(NODE, cache.get_snapshot(NODE))
    assert sorted(s.name for s in server.resource_status(NODE)) == ["a", "c"]
    call.cancel()


async def test_delta_nack_is_reported_and_the_rejected_version_not_pushed_again(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap([cluster("a"), cluster("b")]))
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(CDS))
    resp = await read(call)
    await call.write(dreq(CDS, node=False, nonce=resp.nonce))
    bad = snap([cluster("a", "3s"), cluster("b", "3s")])
    cache.set_snapshot(NODE, bad)
    resp = await read(call)
    await call.write(dreq(CDS, node=False, nonce=resp.nonce, error="cluster b: something wrong"))
    assert [s.name for s in await server.wait_applied(NODE, bad)] == ["b"]
    st = {s.name: s for s in server.resource_status(NODE)}
    assert st["b"].state is AckState.NACKED and st["b"].nack_message == "cluster b: something wrong"
    assert st["b"].version_acked != st["b"].nack_version
    assert st["a"].state is AckState.ACKED   # the message blames b only
    # The next push carries only the next change, not the rejected version again.
    cache.set_snapshot(NODE, snap([cluster("a", "3s"), cluster("b", "3s"), cluster("c")]))
    resp = await read(call)
    assert names(resp) == ["c"]
    call.cancel()


async def test_delta_nack_naming_no_resource_is_isolated_by_resending_each_once(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap(routes=[route("r1"), route("r2")]))
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(RDS, subscribe=["r1", "r2"]))
    resp = await read(call)
    assert names(resp) == ["r1", "r2"]
    await call.write(dreq(RDS, node=False, nonce=resp.nonce, error="missing ): GET("))
    one = await read(call)
    assert names(one) == ["r1"]
    await call.write(dreq(RDS, node=False, nonce=one.nonce))
    two = await read(call)
    assert names(two) == ["r2"]
    await call.write(dreq(RDS, node=False, nonce=two.nonce, error="missing ): GET("))
    nacked = await server.wait_applied(NODE, cache.get_snapshot(NODE))
    assert [(n.name, n.nack_message) for n in nacked] == [("r2", "missing ): GET(")]
    st = {s.name: s for s in server.resource_status(NODE)}
    assert st["r1"].state is AckState.ACKED
    # Isolation is done: the next change is pushed normally, r2's rejected version is not resent.
    cache.set_snapshot(NODE, snap(routes=[route("r1"), route("r2"), route("r3")]))
    await call.write(dreq(RDS, node=False, subscribe=["r3"]))
    resp = await read(call)
    assert names(resp) == ["r3"]
    call.cancel()


async def test_delta_one_response_in_flight_and_latest_state_wins(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap([cluster("a")]))
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(CDS))
    first = await read(call)
    for i in range(5):                      # no ACK yet: nothing more may be sent
        cache.set_snapshot(NODE, snap([cluster("a"), cluster(f"x{i}")]))
    await call.write(dreq(CDS, node=False, nonce=first.nonce))
    resp = await read(call)
    assert names(resp) == ["x4"]
    call.cancel()


async def test_delta_named_subscriptions_and_reconnect_versions(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap(routes=[route("r1"), route("r2")]))
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(RDS, subscribe=["r1"]))
    resp = await read(call)
    assert names(resp) == ["r1"]
    v1 = resp.resources[0].version
    await call.write(dreq(RDS, node=False, nonce=resp.nonce, subscribe=["r2"]))
    resp = await read(call)
    assert names(resp) == ["r2"]
    call.cancel()
    # A reconnecting Envoy that already holds r1 gets nothing for it, and is reported as holding it.
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(RDS, subscribe=["r1"], initial={"r1": v1}))
    resp = await read(call)
    assert names(resp) == []
    st = {s.name: s for s in server.resource_status(NODE)}
    assert st["r1"].state is AckState.ACKED and st["r1"].version_acked == v1
    call.cancel()


async def test_first_request_without_node_id_is_refused(xds):
    _, _, ch = xds
    call = stub(ch).DeltaAggregatedResources()
    await call.write(dreq(CDS, node=False))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await read(call)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in exc.value.details()


# ---- State of the World --------------------------------------------------------------------


async def test_sotw_waits_for_a_snapshot_then_sends_full_sets(xds):
    cache, server, ch = xds
    call = stub(ch).StreamAggregatedResources()
    await call.write(sreq(CDS))
    cache.set_snapshot(NODE, snap([cluster("a")]))   # the first answer can only come after this
    resp = await read(call)
    assert names_sotw(resp) == ["a"] and resp.version_info
    await call.write(sreq(CDS, version=resp.version_info, nonce=resp.nonce))
    cache.set_snapshot(NODE, snap([cluster("a"), cluster("b")]))
    resp2 = await read(call)
    assert names_sotw(resp2) == ["a", "b"] and resp2.version_info != resp.version_info
    # A stale nonce (the first one) is ignored: the pending response stays pending.
    await call.write(sreq(CDS, version=resp.version_info, nonce=resp.nonce))
    await call.write(sreq(CDS, version=resp2.version_info, nonce=resp2.nonce))
    await server.wait_applied(NODE, cache.get_snapshot(NODE))
    assert {s.state for s in server.resource_status(NODE)} == {AckState.ACKED}
    call.cancel()


async def test_sotw_nack_is_not_repushed(xds):
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap([cluster("a")]))
    call = stub(ch).StreamAggregatedResources()
    await call.write(sreq(CDS))
    resp = await read(call)
    await call.write(sreq(CDS, version=resp.version_info, nonce=resp.nonce))
    bad = snap([cluster("a", "5s")])
    cache.set_snapshot(NODE, bad)
    resp2 = await read(call)
    await call.write(sreq(CDS, version=resp.version_info, nonce=resp2.nonce, error="nope"))
    nacked = await server.wait_applied(NODE, bad)
    assert [n.nack_message for n in nacked] == ["nope"]
    status = server.status()
    assert status["nodes"][0]["nacked"] == 1 and status["ack_latency_ms"]["count"] == 2
    # SotW always sends full sets: the next change carries the new set (no repeat of the bad one).
    cache.set_snapshot(NODE, snap([cluster("a", "5s"), cluster("z")]))
    resp3 = await read(call)
    assert names_sotw(resp3) == ["a", "z"]
    call.cancel()


async def test_sotw_routes_nack_is_isolated_with_single_route_responses(xds):
    from envoy.config.route.v3 import route_pb2
    cache, server, ch = xds
    cache.set_snapshot(NODE, snap(routes=[route("r1"), route("r2")]))
    call = stub(ch).StreamAggregatedResources()
    await call.write(sreq(RDS, names=["r1", "r2"]))
    resp = await read(call)
    assert len(resp.resources) == 2
    await call.write(sreq(RDS, names=["r1", "r2"], nonce=resp.nonce, error="bad regex"))

    def route_names(r):
        out = []
        for a in r.resources:
            m = route_pb2.RouteConfiguration()
            a.Unpack(m)
            out.append(m.name)
        return out

    one = await read(call)
    assert route_names(one) == ["r1"]
    await call.write(sreq(RDS, names=["r1", "r2"], version=one.version_info, nonce=one.nonce))
    two = await read(call)
    assert route_names(two) == ["r2"]
    await call.write(sreq(RDS, names=["r1", "r2"], nonce=two.nonce, error="bad regex"))
    nacked = await server.wait_applied(NODE, cache.get_snapshot(NODE))
    assert [n.name for n in nacked] == ["r2"]
    call.cancel()


def names_sotw(resp) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2
    out = []
    for a in resp.resources:
        c = cluster_pb2.Cluster()
        a.Unpack(c)
        out.append(c.name)
    return sorted(out)


async def test_unix_socket_listener(tmp_path):
    cache = SnapshotCache()
    server = XdsServer(cache)
    path = tmp_path / "xds.sock"
    target = await server.start(unix_path=str(path))
    try:
        assert target == f"unix:{path}" and path.exists()
        async with grpc.aio.insecure_channel(target) as ch:
            call = stub(ch).DeltaAggregatedResources()
            await call.write(dreq(LDS))
            assert (await read(call)).type_url == LDS
            call.cancel()
    finally:
        await server.stop(0)
