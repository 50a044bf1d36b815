"""The Kafka-aware proxy: an asyncio shell around the sans-IO parser in l7parsers.kafka.

Per client connection it reads request frames, asks the agent's policy (`policy_for`, `identity_for`)
about each, forwards allowed ones unchanged to the broker and answers denied ones itself with the API's
authorization error. Responses reach the client in request order even when some were answered locally
(Kafka clients match responses by order as much as by correlation id), so every request that expects a
response takes a slot in a queue that is flushed from the front.

Two modes:
- transparent: the listener has IP_TRANSPARENT; the datapath steers redirected flows to it with
  bpf_sk_assign, so the accepted socket's local address (getsockname) is the broker the client dialled,
  and the proxy connects there (optionally with SO_MARK so the datapath does not redirect it again);
- explicit: listen on an address and forward to a configured upstream (tests, no datapath).

Fail closed: a malformed frame, a policy callback that raises, a denial the proxy cannot encode, or any
internal error closes that connection with an ERROR (or DENIED) record; nothing of the offending request
is forwarded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from mesh.policy.l7 import L7Policy

from l7parsers.kafka import (
    DEFAULT_MAX_FRAME_SIZE, NEED_DATA, ConnectionClosed, ProtocolError, Request, RequestParser, Response,
    ResponseParser,
)
from l7parsers.kafka.apis import api_name
from l7parsers.kafka.policy import Decision, TopicNames, decide
from l7parsers.kafka.responses import (
    denied_response, metadata_request_without, metadata_response_filtered, metadata_response_with_denied,
    top_level_error,
)

log = logging.getLogger(__name__)

IP_TRANSPARENT = 19
SO_MARK = 36
READ_SIZE = 256 * 1024

PolicyFor = Callable[[str, str, int], "L7Policy | None"]
IdentityFor = Callable[[str], int]


class Verdict(enum.StrEnum):
    FORWARDED = "FORWARDED"
    DENIED = "DENIED"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One request seen by the proxy (the observability side turns it into a flow)."""

    time: float  # wall clock when the request was read
    verdict: Verdict
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    api_key: int | None = None
    api: str = ""
    api_version: int | None = None
    correlation_id: int | None = None
    client_id: str | None = None
    topics: tuple[str, ...] = ()
    src_identity: int | None = None
    error_code: int | None = None  # the error a locally built response carried (denials)
    reason: str = ""
    latency_s: float | None = None  # request read → response written (None: no response expected)
    rules: tuple = ()
    direction: str = ""  # "ingress" / "egress": whose rules this proxy enforces ("" when not told)


@dataclass(slots=True)
class ProxyCounters:
    connections: int = 0
    active_connections: int = 0
    requests: int = 0
    forwarded: int = 0
    denied: int = 0
    rejected_frames: int = 0  # malformed/oversized frames (connection closed)
    timeouts: int = 0  # frame or idle timeouts
    upstream_errors: int = 0  # connect failures, broker-side protocol errors
    internal_errors: int = 0  # policy callback or proxy bugs (fail closed)


@dataclass(slots=True)
class _Slot:
    request: Request | None
    started: float
    wall: float
    decision: Decision | None
    identity: int | None
    frame: bytes | None = None  # the response to send (None while waiting for the broker)
    local: bool = False
    error_code: int | None = None
    denied_topics: tuple[str, ...] = ()  # Metadata: add these to the broker's response as denied
    topic_filter: Callable[[str], bool] | None = None  # all-topics Metadata: hide what the peer may not see


class _Close(Exception):
    """Ends a connection (after the record explaining why was emitted)."""


class KafkaProxy:
    def __init__(self, *, policy_for: PolicyFor, identity_for: IdentityFor,
                 on_record: Callable[[KafkaRecord], None] | None = None,
                 listen: tuple[str, int] = ("127.0.0.1", 0), upstream: tuple[str, int] | None = None,
                 transparent: bool = False, upstream_mark: int | None = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, frame_timeout: float = 30.0,
                 idle_timeout: float | None = 600.0, connect_timeout: float = 5.0,
                 topic_names: TopicNames | None = None, peer_is_destination: bool = False,
                 direction: str = "") -> None:
        """`peer_is_destination`: the policy is the source's egress policy, whose rules name the destination;
        requests are then checked against the destination's identity (ingress policy: the source's).
        `direction` is copied into every record (the flow's traffic direction)."""
        if not transparent and upstream is None:
            raise ValueError("explicit mode needs an upstream (host, port); transparent mode takes the "
                             "original destination from each accepted socket")
        self.policy_for = policy_for
        self.identity_for = identity_for
        self.on_record = on_record
        self.listen = listen
        self.upstream = upstream
        self.transparent = transparent
        self.upstream_mark = upstream_mark
        self.max_frame_size = max_frame_size
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.topic_names = topic_names if topic_names is not None else TopicNames()
        self.peer_is_destination = peer_is_destination
        self.direction = direction
        self.counters = ProxyCounters()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("proxy not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        # Load kafka-python's codec now (~0.2 s), not on the first denial.
        from l7parsers.kafka.responses import _classes
        _classes()
        sock = socket.socket(socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.transparent:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind(self.listen)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=READ_SIZE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "KafkaProxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _emit(self, record: KafkaRecord | None) -> None:
        if self.on_record is None or record is None:
            return
        try:
            self.on_record(record)
        except Exception:  # an observer's bug must not take the proxy down
            log.exception("Kafka record callback failed")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.counters.connections += 1
        self.counters.active_connections += 1
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass
        except Exception:
            self.counters.internal_errors += 1
            log.exception("Kafka proxy connection failed")
        finally:
            self.counters.active_connections -= 1
            self._conns.discard(task)
            writer.transport.abort()

    async def open_upstream(self, dst: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.upstream_mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.upstream_mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, dst), self.connect_timeout)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=READ_SIZE)


class _Connection:
    def __init__(self, proxy: KafkaProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        self.src = (str(peer[0]), int(peer[1]))
        if proxy.transparent:
            self.dst = (str(local[0]), int(local[1]))  # the original destination (sk_assign / TPROXY)
        else:
            assert proxy.upstream is not None
            self.dst = (proxy.upstream[0], int(proxy.upstream[1]))
        self.requests = RequestParser(proxy.max_frame_size)
        self.responses = ResponseParser(proxy.max_frame_size)
        self.queue: deque[_Slot] = deque()  # every request that expects a response, in request order
        self.awaiting: deque[_Slot] = deque()  # forwarded slots whose broker response has not come yet
        self.up_writer: asyncio.StreamWriter | None = None
        self.closing = False
        self.timed_out = False
        self._timer: asyncio.TimerHandle | None = None
        self._pump_up: asyncio.Task | None = None
        self._last_read = asyncio.get_running_loop().time()

    def _record(self, verdict: Verdict, req: Request | None = None, **kw) -> KafkaRecord | None:
        if self.proxy.on_record is None:
            return None  # nobody listens: skip building records on the hot path
        base = dict(time=time.time(), verdict=verdict, src_ip=self.src[0], src_port=self.src[1],
                    dst_ip=self.dst[0], dst_port=self.dst[1], direction=self.proxy.direction)
        if req is not None:
            base.update(api_key=req.api_key, api=api_name(req.api_key), api_version=req.api_version,
                        correlation_id=req.correlation_id, client_id=req.client_id, topics=req.topics)
        base.update(kw)
        return KafkaRecord(**base)

    async def run(self) -> None:
        proxy = self.proxy
        if proxy.transparent and self.dst[1] == proxy.address[1]:
            # Dialled the proxy's own port (not a redirected flow): forwarding would loop back to us.
            proxy._emit(self._record(Verdict.ERROR, reason="connection addressed to the proxy itself"))
            return
        try:
            up_reader, self.up_writer = await proxy.open_upstream(self.dst)
        except (OSError, asyncio.TimeoutError) as exc:
            proxy.counters.upstream_errors += 1
            proxy._emit(self._record(Verdict.ERROR, reason=f"cannot connect to {self.dst[0]}:{self.dst[1]}: {exc}"))
            return
        pump_up = asyncio.ensure_future(self._client_to_broker())
        pump_down = asyncio.ensure_future(self._broker_to_client(up_reader))
        self._pump_up = pump_up
        self._arm_timer()
        try:
            done, _ = await asyncio.wait({pump_up, pump_down}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None and not isinstance(exc, _Close):
                    raise exc
            if self.timed_out:
                return
            # The client side ended first: let responses still owed to it arrive (bounded), then close.
            if pump_up in done and not pump_down.done() and self.queue and not self.closing:
                await asyncio.wait({pump_down}, timeout=proxy.frame_timeout)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for t in (pump_up, pump_down):
                t.cancel()
            await asyncio.gather(pump_up, pump_down, return_exceptions=True)
            self.up_writer.transport.abort()

    # client → broker ---------------------------------------------------------------------------------

    # One timer per connection instead of a wait_for() per read (which costs a task per read): each read
    # only moves the deadline; the timer re-arms itself until the deadline really passes.
    def _deadline(self) -> float | None:
        timeout = self.proxy.frame_timeout if self.requests.partial_frame else self.proxy.idle_timeout
        return None if timeout is None else self._last_read + timeout

    def _arm_timer(self) -> None:
        deadline = self._deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._on_timer)
            return
        proxy = self.proxy
        proxy.counters.timeouts += 1
        partial = self.requests.partial_frame
        timeout = proxy.frame_timeout if partial else proxy.idle_timeout
        what = "an unfinished frame" if partial else "an idle connection"
        proxy._emit(self._record(Verdict.ERROR, reason=f"timeout on {what} after {timeout:g}s"))
        self.timed_out = True
        if self._pump_up is not None:
            self._pump_up.cancel()

    def _touch(self) -> None:
        """After each read: move the deadline; re-arm only when it moved earlier (a frame has started)."""
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        deadline = self._deadline()
        if deadline is not None and (self._timer is None or deadline < self._timer.when()):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)

    async def _client_to_broker(self) -> None:
        proxy = self.proxy
        assert self.up_writer is not None
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError:
                data = b""
            self.requests.receive_data(data)
            forwarded = False
            while True:
                event = self.requests.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Request):
                    forwarded |= self._on_request(event)
                    continue
                if isinstance(event, ConnectionClosed):
                    if forwarded:
                        await self.up_writer.drain()
                    raise _Close()
                assert isinstance(event, ProtocolError)
                proxy.counters.rejected_frames += 1
                proxy._emit(self._record(
                    Verdict.ERROR, None, api_key=event.api_key,
                    api=api_name(event.api_key) if event.api_key is not None else "",
                    api_version=event.api_version, correlation_id=event.correlation_id,
                    reason=f"malformed request: {event.reason}"))
                self.closing = True
                raise _Close()
            self._touch()
            if forwarded:
                await self.up_writer.drain()
            self._flush()
            await self.writer.drain()

    def _on_request(self, req: Request) -> bool:
        """Decide, then forward or answer. Returns True when bytes went to the broker."""
        proxy = self.proxy
        proxy.counters.requests += 1
        started = time.monotonic()
        wall = time.time()
        try:
            policy = proxy.policy_for(self.src[0], self.dst[0], self.dst[1])
            identity = proxy.identity_for(self.src[0]) if policy is not None else None
            peer = proxy.identity_for(self.dst[0]) if policy is not None and proxy.peer_is_destination \
                else identity
            decision = decide(policy, peer if peer is not None else 0, req, proxy.topic_names)
        except Exception as exc:  # fail closed: no verdict, no forwarding
            proxy.counters.internal_errors += 1
            log.exception("Kafka policy evaluation failed")
            proxy._emit(self._record(Verdict.ERROR, req, reason=f"policy evaluation failed: {exc}"))
            self.closing = True
            raise _Close() from None
        if decision.allowed:
            frame = req.frame
            if decision.denied_topics:
                proxy.counters.denied += 1
                frame = self._rewrite(metadata_request_without, req, frozenset(decision.denied_topics),
                                      proxy.topic_names.name)
            else:
                proxy.counters.forwarded += 1
            if req.expects_response:
                slot = _Slot(req, started, wall, decision, identity, denied_topics=decision.denied_topics,
                             topic_filter=decision.topic_filter)
                self.queue.append(slot)
                self.awaiting.append(slot)
                self.responses.expect(req.correlation_id, req.api_key, req.api_version)
            else:
                proxy._emit(self._record(Verdict.FORWARDED, req, time=wall, topics=decision.topics,
                                         src_identity=identity, rules=decision.rules))
            assert self.up_writer is not None
            self.up_writer.write(frame)
            return True
        proxy.counters.denied += 1
        if not req.expects_response:  # acks=0: the client waits for nothing
            proxy._emit(self._record(Verdict.DENIED, req, time=wall, topics=decision.topics,
                                     src_identity=identity, reason=decision.reason))
            return False
        try:
            frame = denied_response(req)
        except Exception:
            proxy.counters.internal_errors += 1
            log.exception("building a Kafka denial failed")
            frame = None
        if frame is None:
            proxy._emit(self._record(Verdict.DENIED, req, time=wall, topics=decision.topics, src_identity=identity,
                                     reason=f"{decision.reason}; no response can be built for this API "
                                            "version, connection closed"))
            self.closing = True
            raise _Close()
        code = top_level_error(req) or 29
        self.queue.append(_Slot(req, started, wall, decision, identity, frame, local=True, error_code=code))
        return False

    def _rewrite(self, fn, *args) -> bytes:
        try:
            return fn(*args)
        except Exception as exc:  # fail closed: never forward what could not be rewritten
            self.proxy.counters.internal_errors += 1
            log.exception("rewriting a Kafka Metadata message failed")
            self.proxy._emit(self._record(Verdict.ERROR, reason=f"metadata rewrite failed: {exc}"))
            self.closing = True
            raise _Close() from None

    # broker → client ---------------------------------------------------------------------------------

    async def _broker_to_client(self, up_reader: asyncio.StreamReader) -> None:
        proxy = self.proxy
        while True:
            try:
                data = await up_reader.read(READ_SIZE)
            except ConnectionError:
                data = b""
            self.responses.receive_data(data)
            while True:
                event = self.responses.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Response):
                    if event.topic_names_by_id:
                        proxy.topic_names.learn(event.topic_names_by_id)
                    slot = self.awaiting.popleft()
                    if slot.denied_topics:
                        slot.frame = self._rewrite(metadata_response_with_denied, event.frame,
                                                   event.api_version, slot.denied_topics)
                    elif slot.topic_filter is not None:
                        slot.frame = self._rewrite(metadata_response_filtered, event.frame, event.api_version,
                                                   slot.topic_filter)
                    else:
                        slot.frame = event.frame
                    continue
                if isinstance(event, ConnectionClosed):
                    self._flush()
                    raise _Close()
                assert isinstance(event, ProtocolError)
                proxy.counters.upstream_errors += 1
                proxy._emit(self._record(Verdict.ERROR, reason=f"malformed broker response: {event.reason}",
                                         correlation_id=event.correlation_id))
                raise _Close()
            self._flush()
            await self.writer.drain()

    def _flush(self) -> None:
        """Send every response at the head of the queue that is ready, in request order."""
        queue = self.queue
        if not queue or queue[0].frame is None:
            return
        proxy = self.proxy
        out = []
        now = time.monotonic()
        while queue and queue[0].frame is not None:
            slot = queue.popleft()
            out.append(slot.frame)
            req = slot.request
            assert req is not None and slot.decision is not None
            if slot.local or slot.denied_topics:
                proxy._emit(self._record(Verdict.DENIED, req, time=slot.wall, topics=slot.decision.topics,
                                         src_identity=slot.identity, error_code=slot.error_code or 29,
                                         reason=slot.decision.reason, latency_s=now - slot.started))
            else:
                proxy._emit(self._record(Verdict.FORWARDED, req, time=slot.wall, topics=slot.decision.topics,
                                         src_identity=slot.identity, rules=slot.decision.rules,
                                         latency_s=now - slot.started))
        self.writer.writelines(out)
