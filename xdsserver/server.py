"""ADS server over gRPC (grpc.aio): Delta xDS (Ostium's default) and State-of-the-World.

The server knows nothing of policy: it serves whatever the SnapshotCache holds for the node id an
Envoy presents, and tracks what each Envoy did with it (ACK/NACK per resource, with Envoy's error
message) for `ostium status`.

Protocol choices (see Envoy's "xDS REST and gRPC protocol" doc):
- One response in flight per type and stream: the next push for a type waits for the ACK/NACK of
  the previous one. Every push is computed from the node's current snapshot, so intermediate
  snapshots are skipped, never queued.
- Versions Envoy is told about are recorded when sent. A NACKed version is therefore not pushed
  again (no rejection loop); Envoy keeps its last good config by itself, and the next *different*
  version of that resource is pushed normally. The NACK stays visible in `status()`.
- Delta: an initial request is always answered (an empty response if the node has no snapshot
  yet), because Envoy's init (and /ready) waits for the first CDS/LDS response.
  State-of-the-World: an empty response would delete everything Envoy has, so a SotW stream waits
  for the first snapshot instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any as AnyT, AsyncIterator, Iterable, Protocol

from xdsserver import resources as res
from xdsserver.cache import Snapshot, SnapshotCache, VersionedResource

if TYPE_CHECKING:  # pragma: no cover
    import grpc.aio

log = logging.getLogger(__name__)


class AckState(str, Enum):
    PENDING = "pending"   # sent, no answer yet
    ACKED = "acked"
    NACKED = "nacked"     # Envoy rejected the sent version; it still runs `version_acked`


class StreamKind(str, Enum):
    DELTA = "delta"
    SOTW = "sotw"


@dataclass(slots=True)
class ResourceStatus:
    """What one Envoy (node) did with one resource."""

    node_id: str
    type_url: str
    name: str
    version_sent: str
    version_acked: str = ""
    state: AckState = AckState.PENDING
    nack_message: str = ""        # Envoy's error_detail.message of the last NACK, "" once fixed
    nack_version: str = ""        # the version Envoy rejected
    nonce: str = ""
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, AnyT]:
        out = asdict(self)
        out["type"] = res.full_type_name(self.type_url).rsplit(".", 1)[-1]
        out["state"] = self.state.value
        return out


@dataclass(frozen=True, slots=True)
class LatencySample:
    """Push (response written) → ACK/NACK received, for one response."""

    node_id: str
    type_url: str
    kind: StreamKind
    seconds: float
    nacked: bool
    resources: int


@dataclass(slots=True)
class _StreamInfo:
    stream_id: int
    node_id: str
    kind: StreamKind
    peer: str
    connected_at: float = field(default_factory=time.time)


class Servicer(Protocol):
    """Anything that can add itself to the same gRPC server (e.g. the ALS receiver)."""

    def add_to_server(self, server: "grpc.aio.Server") -> None: ...


class XdsServer:
    """ADS (Delta + SotW) over grpc.aio, serving a SnapshotCache."""

    def __init__(self, cache: SnapshotCache, *, max_latency_samples: int = 10_000) -> None:
        self.cache = cache
        self._server: grpc.aio.Server | None = None
        self._target = ""
        self._port = 0
        self._status: dict[str, dict[tuple[str, str], ResourceStatus]] = {}
        self._streams: dict[int, _StreamInfo] = {}
        self._latency: collections.deque[LatencySample] = collections.deque(maxlen=max_latency_samples)
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._progress = asyncio.Condition()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, *, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None,
                    servicers: Iterable[Servicer] = ()) -> str:
        """Listen on host:port (0 = pick a free port) or on a unix socket; return the target."""
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_AdsServicer(self), server)
        for extra in servicers:
            extra.add_to_server(server)
        if unix_path:
            target = f"unix:{unix_path}"
            server.add_insecure_port(target)
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
            if bound == 0:
                raise OSError(f"xDS server cannot listen on {host}:{port}")
            self._port = bound
            target = f"{host}:{bound}"
        await server.start()
        self._server, self._target = server, target
        return target

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def target(self) -> str:
        return self._target

    # ---- status ----------------------------------------------------------------------------

    def resource_status(self, node_id: str | None = None) -> list[ResourceStatus]:
        nodes = [node_id] if node_id else sorted(self._status)
        out: list[ResourceStatus] = []
        for n in nodes:
            out.extend(sorted(self._status.get(n, {}).values(), key=lambda s: (s.type_url, s.name)))
        return out

    def latency_samples(self) -> list[LatencySample]:
        """Push → ACK samples (seconds), oldest first; feed them to a histogram."""
        return list(self._latency)

    def connected_nodes(self) -> list[str]:
        return sorted({s.node_id for s in self._streams.values() if s.node_id})

    def status(self) -> dict[str, AnyT]:
        """JSON-ready summary for `ostium status` / the agent API."""
        nodes = sorted(set(self._status) | set(self.cache.node_ids()) | set(self.connected_nodes()))
        out_nodes = []
        for n in nodes:
            rs = self.resource_status(n)
            snap = self.cache.get_snapshot(n)
            out_nodes.append({
                "node_id": n,
                "snapshot_version": snap.version if snap else "",
                "streams": [{"kind": s.kind.value, "peer": s.peer, "connected_at": s.connected_at}
                            for s in self._streams.values() if s.node_id == n],
                "acked": sum(r.state is AckState.ACKED for r in rs),
                "pending": sum(r.state is AckState.PENDING for r in rs),
                "nacked": sum(r.state is AckState.NACKED for r in rs),
                "resources": [r.to_dict() for r in rs],
            })
        secs = sorted(s.seconds for s in self._latency)
        return {"target": self._target, "nodes": out_nodes, "ack_latency_ms": _summary(secs)}

    async def wait_applied(self, node_id: str, snapshot: Snapshot, timeout: float = 10.0,
                           type_urls: Iterable[str] | None = None) -> list[ResourceStatus]:
        """Wait until Envoy answered (ACK or NACK) every resource of `snapshot` (of `type_urls`,
        default all its types); return the NACKed ones.

        Resources of named (non-wildcard) types, such as routes, are only sent once Envoy asks for
        them: if Envoy never will (their listener was rejected), leave their type out.
        """
        types = list(type_urls) if type_urls is not None else snapshot.type_urls()
        def answered() -> bool:
            st = self._status.get(node_id, {})
            for t in types:
                for name, vr in snapshot.resources(t).items():
                    s = st.get((t, name))
                    if s is None or s.state is AckState.PENDING:
                        return False
                    if vr.version not in (s.version_acked, s.nack_version):
                        return False
            return True

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(answered), timeout)
        # Other tasks may run between the condition and here (a stream that ends resets its node's
        # resources): a resource without a status now was answered, not rejected.
        st = self._status.get(node_id, {})
        return [s for t in types for n in snapshot.resources(t)
                if (s := st.get((t, n))) is not None and s.state is AckState.NACKED]

    # ---- bookkeeping used by the streams ------------------------------------------------------

    def _new_nonce(self) -> str:
        return str(next(self._nonces))

    def _record_sent(self, node_id: str, type_url: str, nonce: str,
                     sent: Iterable[VersionedResource]) -> None:
        st = self._status.setdefault(node_id, {})
        now = time.time()
        for vr in sent:
            s = st.get((type_url, vr.name))
            if s is None:
                st[(type_url, vr.name)] = ResourceStatus(node_id, type_url, vr.name, vr.version,
                                                         nonce=nonce, updated_at=now)
            else:
                s.version_sent, s.state, s.nonce, s.updated_at = vr.version, AckState.PENDING, nonce, now

    async def _record_answer(self, node_id: str, type_url: str, nonce: str, removed: Iterable[str],
                             error: str | None, sample: LatencySample,
                             isolating: frozenset[str] = frozenset()) -> None:
        st = self._status.setdefault(node_id, {})
        now = time.time()
        in_response = [s for (t, _), s in st.items() if t == type_url and s.nonce == nonce]
        # Envoy NACKs a whole response but applies the resources it could (LDS/CDS add each one);
        # its message names the failing ones, so blame those when it does, all of them otherwise.
        # Resources being isolated (a Delta stream resends them one by one to find the culprit)
        # stay pending until their own answer.
        blamed = [s for s in in_response if error and s.name in error] or in_response
        for s in in_response:
            if s.name in isolating:
                s.nack_message, s.updated_at = f"being isolated after NACK: {error}", now
                continue
            if error and s in blamed:
                s.state, s.nack_message, s.nack_version = AckState.NACKED, error, s.version_sent
                log.warning("Envoy %s rejected %s %s version %s: %s", node_id,
                            res.full_type_name(type_url), s.name, s.version_sent, error)
            else:
                s.state, s.version_acked = AckState.ACKED, s.version_sent
                if s.nack_version != s.version_sent:
                    s.nack_message, s.nack_version = "", ""
            s.updated_at = now
        if not error:
            for name in removed:
                st.pop((type_url, name), None)
        self._latency.append(sample)
        async with self._progress:
            self._progress.notify_all()

    def _record_held(self, node_id: str, type_url: str, versions: dict[str, str]) -> None:
        """An Envoy that reconnects (e.g. after an agent restart) runs these versions already."""
        st = self._status.setdefault(node_id, {})
        now = time.time()
        for name, version in versions.items():
            st[(type_url, name)] = ResourceStatus(node_id, type_url, name, version, version,
                                                  AckState.ACKED, updated_at=now)

    def _forget_node(self, node_id: str) -> None:
        # A new Envoy instance (restart) starts from nothing: old ACKs say nothing about it.
        self._status.pop(node_id, None)


def _summary(secs: list[float]) -> dict[str, AnyT]:
    if not secs:
        return {"count": 0}

    def q(p: float) -> float:
        return round(secs[min(len(secs) - 1, int(p * len(secs)))] * 1000, 3)

    return {"count": len(secs), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
            "max": round(secs[-1] * 1000, 3)}


# ---- streams --------------------------------------------------------------------------------


class _AdsServicer:
    """grpc.aio servicer: one coroutine per stream, driven by requests and snapshot changes."""

    def __init__(self, server: XdsServer) -> None:
        self._srv = server

    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802
        await _Stream(self._srv, context, StreamKind.SOTW).run(request_iterator)

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        await _Stream(self._srv, context, StreamKind.DELTA).run(request_iterator)


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)   # delta: name → version Envoy was sent
    sent_version: str | None = None                     # sotw: version_info last sent
    sent_names: frozenset[str] = frozenset()             # sotw: resource names last sent
    pending_nonce: str = ""
    pending_at: float = 0.0
    pending_count: int = 0
    pending_removed: tuple[str, ...] = ()
    pending_names: tuple[str, ...] = ()
    suspects: list[str] = field(default_factory=list)    # delta: resend one by one (NACK culprit)
    responded: bool = False
    acked_version: str = ""


_END = object()


class _Stream:
    def __init__(self, srv: XdsServer, context, kind: StreamKind) -> None:
        self.srv = srv
        self.ctx = context
        self.kind = kind
        self.node_id = ""
        self.types: dict[str, _TypeState] = {}
        self.info = _StreamInfo(next(srv._ids), "", kind, context.peer())

    async def run(self, request_iterator: AsyncIterator) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for req in request_iterator:
                    await queue.put(req)
            except Exception as exc:  # stream broken: end the loop with the reason
                log.debug("xDS stream %s read ended: %r", self.info.stream_id, exc)
            finally:
                await queue.put(_END)

        reader = asyncio.create_task(pump())
        self.srv._streams[self.info.stream_id] = self.info
        try:
            while True:
                waits: set[asyncio.Future] = {asyncio.ensure_future(queue.get())}
                if self.node_id:
                    waits.add(asyncio.ensure_future(self.srv.cache.changed_event(self.node_id).wait()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for fut in waits:   # also when the stream itself is cancelled
                        if not fut.done():
                            fut.cancel()
                # A queue.get() can complete in the same instant as the snapshot change; never
                # drop a request it already took.
                for fut in waits:
                    if fut.done() and not fut.cancelled() and fut.result() is not True:
                        req = fut.result()
                        if req is _END:
                            return
                        await self._on_request(req)
                if self.node_id:
                    await self._push()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.srv._streams.pop(self.info.stream_id, None)
            log.info("xDS %s stream from %s (%s) closed", self.kind.value, self.node_id, self.info.peer)

    # ---- requests ----

    async def _on_request(self, req) -> None:
        if not self.node_id:
            if not req.node.id:
                import grpc
                await self.ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                     "the first xDS request must carry node.id")
            self.node_id = req.node.id
            self.info.node_id = self.node_id
            if not any(s.node_id == self.node_id and s is not self.info
                       for s in self.srv._streams.values()):
                self.srv._forget_node(self.node_id)
            log.info("xDS %s stream from node %s (%s)", self.kind.value, self.node_id, self.info.peer)
        if self.kind is StreamKind.DELTA:
            await self._on_delta(req)
        else:
            await self._on_sotw(req)

    async def _answer(self, t: str, st: _TypeState, nonce: str, error: str | None) -> None:
        sample = LatencySample(self.node_id, t, self.kind, time.monotonic() - st.pending_at,
                               bool(error), st.pending_count)
        removed, names = st.pending_removed, st.pending_names
        st.pending_nonce, st.pending_removed, st.pending_names = "", (), ()
        isolating: frozenset[str] = frozenset()
        # SotW may send a subset only for named types (RDS/EDS: an absent resource is unchanged;
        # for LDS/CDS it would be a deletion).
        can_isolate = self.kind is StreamKind.DELTA or t not in res.WILDCARD_TYPES
        if error and can_isolate and len(names) > 1 and not any(n in error for n in names):
            # Envoy's message does not say which resource failed (RDS errors name none), and it
            # may or may not have applied the others. Resend each once, alone, so its own
            # ACK/NACK tells. Bounded: every suspect is resent exactly once.
            isolating = frozenset(names)
            st.suspects = sorted(names)
            for n in names:
                st.known.pop(n, None)
        await self.srv._record_answer(self.node_id, t, nonce, removed, error, sample, isolating)

    async def _on_delta(self, req) -> None:
        t = req.type_url
        st = self.types.get(t)
        if st is None:
            subs = set(req.resource_names_subscribe)
            # "Legacy wildcard": a first request naming nothing means everything (LDS/CDS).
            st = self.types[t] = _TypeState(wildcard="*" in subs or (not subs and t in res.WILDCARD_TYPES))
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                st.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            else:
                st.names.discard(name)
                st.known.pop(name, None)
        # Reconnect: Envoy tells us what it already has, so unchanged resources are not resent.
        if req.initial_resource_versions:
            st.known.update(req.initial_resource_versions)
            self.srv._record_held(self.node_id, t, dict(req.initial_resource_versions))
        if req.response_nonce and req.response_nonce == st.pending_nonce:
            error = req.error_detail.message.strip() if req.HasField("error_detail") else None
            await self._answer(t, st, req.response_nonce, error or None)

    async def _on_sotw(self, req) -> None:
        t = req.type_url
        st = self.types.get(t)
        if st is None:
            st = self.types[t] = _TypeState()
        names = set(req.resource_names)
        st.wildcard = not names or "*" in names
        st.names = names - {"*"}
        if req.response_nonce:
            if req.response_nonce != st.pending_nonce:
                return  # stale: Envoy answers the newest nonce later
            error = req.error_detail.message.strip() if req.HasField("error_detail") else None
            if not error:
                st.acked_version = req.version_info
            await self._answer(t, st, req.response_nonce, error or None)

    # ---- pushes ----

    def _wanted(self, snap: Snapshot | None, t: str, st: _TypeState) -> dict[str, VersionedResource]:
        if snap is None:
            return {}
        have = snap.resources(t)
        if st.wildcard:
            return dict(have)
        return {n: have[n] for n in st.names if n in have}

    async def _push(self) -> None:
        snap = self.srv.cache.get_snapshot(self.node_id)
        order = [t for t in res.PUSH_ORDER if t in self.types] + \
                [t for t in self.types if t not in res.PUSH_ORDER]
        for t in order:
            st = self.types[t]
            if st.pending_nonce:
                continue  # one response in flight per type; the ACK triggers the next push
            if self.kind is StreamKind.DELTA:
                await self._push_delta(snap, t, st)
            else:
                await self._push_sotw(snap, t, st)

    async def _push_delta(self, snap: Snapshot | None, t: str, st: _TypeState) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        wanted = self._wanted(snap, t, st)
        removed: list[str] = []
        while st.suspects and st.suspects[0] not in wanted:
            st.suspects.pop(0)
        if st.suspects:
            name = st.suspects.pop(0)
            updated = [wanted[name]]
        else:
            updated = [vr for n, vr in wanted.items() if st.known.get(n) != vr.version]
            removed = [n for n in st.known if n not in wanted and (st.wildcard or n in st.names)]
        if not updated and not removed and st.responded:
            return
        nonce = self.srv._new_nonce()
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snap.version if snap else "",
            type_url=t, nonce=nonce, removed_resources=removed,
            resources=[discovery_pb2.Resource(name=vr.name, version=vr.version, resource=vr.resource)
                       for vr in sorted(updated, key=lambda v: v.name)])
        for vr in updated:
            st.known[vr.name] = vr.version
        for n in removed:
            st.known.pop(n, None)
        self._mark_pending(t, st, nonce, updated, tuple(removed))
        await self.ctx.write(resp)

    async def _push_sotw(self, snap: Snapshot | None, t: str, st: _TypeState) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        if snap is None:
            return  # an empty SotW response would delete everything Envoy has
        wanted = self._wanted(snap, t, st)
        while st.suspects and st.suspects[0] not in wanted:
            st.suspects.pop(0)
        if st.suspects:
            vr = wanted[st.suspects.pop(0)]
            nonce = self.srv._new_nonce()
            resp = discovery_pb2.DiscoveryResponse(
                version_info=f"{st.sent_version}-{vr.version}", type_url=t, nonce=nonce,
                resources=[vr.resource])
            self._mark_pending(t, st, nonce, [vr], ())
            await self.ctx.write(resp)
            return
        version = snap.type_version(t) if st.wildcard else _subset_version(wanted)
        if st.responded and version == st.sent_version and frozenset(wanted) == st.sent_names:
            return
        nonce = self.srv._new_nonce()
        resp = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=t, nonce=nonce,
            resources=[wanted[n].resource for n in sorted(wanted)])
        removed = tuple(n for n in st.sent_names if n not in wanted)
        st.sent_version, st.sent_names = version, frozenset(wanted)
        # SotW always resends the full set; only changed ones matter for per-resource status,
        # but the whole set is what Envoy ACKs, so all of it becomes pending.
        self._mark_pending(t, st, nonce, list(wanted.values()), removed)
        await self.ctx.write(resp)

    def _mark_pending(self, t: str, st: _TypeState, nonce: str, sent: list[VersionedResource],
                      removed: tuple[str, ...]) -> None:
        st.responded = True
        st.pending_nonce, st.pending_at = nonce, time.monotonic()
        st.pending_count, st.pending_removed = len(sent), removed
        st.pending_names = tuple(vr.name for vr in sent)
        self.srv._record_sent(self.node_id, t, nonce, sent)


def _subset_version(items: dict[str, VersionedResource]) -> str:
    import hashlib
    h = hashlib.sha256()
    for n in sorted(items):
        h.update(n.encode() + b"\0" + items[n].version.encode() + b"\0")
    return h.hexdigest()[:16]
