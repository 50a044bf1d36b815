"""Envoy access logs over gRPC (envoy.service.accesslog.v3 ALS) → plain L7 records.

Envoy opens one client stream per access-log config; only the first message of a stream carries
the identifier (node, log_name), so it is remembered per stream. `record_from_entry` is pure and
tested with constructed messages; the receiver is a thin gRPC shell around it.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any as AnyT, Awaitable, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import grpc.aio

log = logging.getLogger(__name__)

RBAC_METADATA_KEY = "envoy.filters.http.rbac"
_PROTOCOLS = {0: "", 1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 4: "HTTP/3"}


@dataclass(slots=True)
class L7Record:
    """One HTTP/gRPC request as Envoy saw it. Treat as immutable (not frozen: one is built per proxied
    request and a frozen dataclass's __init__ costs several times more)."""

    time: float                         # request start, Unix seconds
    node_id: str
    log_name: str                       # Ostium sets it to the filter chain name
    source_ip: str
    source_port: int
    destination_ip: str                 # the original destination (downstream local address)
    destination_port: int
    method: str
    authority: str
    path: str
    protocol: str                       # HTTP/1.1, HTTP/2, ...
    response_code: int                  # 0: no response (reset)
    response_code_details: str
    response_flags: tuple[str, ...]
    duration_ms: float
    grpc_status: int | None
    grpc_message: str
    upstream_cluster: str
    upstream_address: str
    route_name: str
    rbac_denied: bool
    content_type: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)   # custom tags: direction, endpoint...

    @property
    def source(self) -> str:
        return _join(self.source_ip, self.source_port)

    @property
    def destination(self) -> str:
        return _join(self.destination_ip, self.destination_port)

    def to_dict(self) -> dict[str, AnyT]:
        from dataclasses import asdict

        out = asdict(self)
        out["tags"] = dict(self.tags)
        out["response_flags"] = list(self.response_flags)
        return out


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _addr(address) -> tuple[str, int]:
    sa = address.socket_address           # an unset submessage reads as its defaults: no HasField needed
    if sa.address:
        return sa.address, sa.port_value
    if address.HasField("pipe"):
        return address.pipe.path, 0
    return "", 0


def _ms(duration) -> float:
    return duration.seconds * 1000.0 + duration.nanos / 1e6


def record_from_entry(entry, node_id: str = "", log_name: str = "",
                      tags: Mapping[str, str] | None = None) -> L7Record:
    """An envoy.data.accesslog.v3.HTTPAccessLogEntry → L7Record (pure). Runs once per proxied request:
    every protobuf field read counts, so unset parts are tested once and skipped. `tags`: the entry's
    custom tags when the caller already has them (they are literals of the access-log config, the same
    for every entry of one stream); copying a protobuf map costs microseconds."""
    common, req, resp = entry.common_properties, entry.request, entry.response
    src_ip, src_port = _addr(common.downstream_remote_address)
    dst_ip, dst_port = _addr(common.downstream_local_address)
    up_ip, up_port = _addr(common.upstream_remote_address)
    flags = (tuple(sorted(f.name for f, v in common.response_flags.ListFields() if v is True))
             if common.HasField("response_flags") else ())
    if common.HasField("duration"):
        duration = _ms(common.duration)
    elif common.HasField("time_to_last_downstream_tx_byte"):
        duration = _ms(common.time_to_last_downstream_tx_byte)
    else:
        duration = 0.0
    grpc_raw = grpc_message = None
    trailers, headers = resp.response_trailers, resp.response_headers
    if trailers:
        grpc_raw, grpc_message = trailers.get("grpc-status"), trailers.get("grpc-message")
    if headers:
        grpc_raw = grpc_raw or headers.get("grpc-status")
        grpc_message = grpc_message or headers.get("grpc-message")
    grpc_status = int(grpc_raw) if grpc_raw and grpc_raw.isdigit() else None
    details = resp.response_code_details
    rbac_denied = details.startswith("rbac_access_denied")
    if not rbac_denied and common.HasField("metadata"):
        fm = common.metadata.filter_metadata
        if RBAC_METADATA_KEY in fm:
            md = fm[RBAC_METADATA_KEY]
            rbac_denied = md.fields.get("enforced_engine_result") is not None and \
                md.fields["enforced_engine_result"].string_value == "denied"
    start = common.start_time.seconds + common.start_time.nanos / 1e9
    method = req.request_method
    req_headers = req.request_headers
    return L7Record(
        start, node_id, log_name, src_ip, src_port, dst_ip, dst_port,
        _METHODS.get(method) or _method_name(method) if method else "",
        req.authority, req.path, _PROTOCOLS.get(entry.protocol_version, ""),
        resp.response_code.value, details, flags, round(duration, 3), grpc_status, grpc_message or "",
        common.upstream_cluster, _join(up_ip, up_port) if up_ip else "", common.route_name, rbac_denied,
        req_headers.get("content-type", "") if req_headers else "",
        tags if tags is not None else dict(common.custom_tags))


class LazyL7Record:
    """An access-log entry as the receiver hands it on: the few fields read for every request (for
    counters and the flow ring) are read at once; the whole L7Record is built on first access to any
    other field (`full()`, or any L7Record attribute), i.e. only when somebody reads the flow.

    Building the full record for every request cost the agent several times more CPU than Envoy's
    own logging on busy proxies; most flows are never read one by one."""

    __slots__ = ("entry", "node_id", "log_name", "tags", "_full", "time", "source_ip", "destination_ip",
                 "destination_port", "method", "response_code", "rbac_denied", "duration_ms")

    def __init__(self, entry, node_id: str = "", log_name: str = "", tags: Mapping[str, str] | None = None) -> None:
        self.entry, self.node_id, self.log_name = entry, node_id, log_name
        self.tags = tags if tags is not None else dict(entry.common_properties.custom_tags)
        self._full: L7Record | None = None
        common, resp = entry.common_properties, entry.response
        st = common.start_time
        self.time = st.seconds + st.nanos / 1e9
        self.source_ip = common.downstream_remote_address.socket_address.address
        local = common.downstream_local_address.socket_address
        self.destination_ip, self.destination_port = local.address, local.port_value
        method = entry.request.request_method
        self.method = (_METHODS.get(method) or _method_name(method)) if method else ""
        self.response_code = resp.response_code.value
        details = resp.response_code_details
        # A response that came from upstream was not denied: the metadata is read only otherwise.
        self.rbac_denied = details != "via_upstream" and (details.startswith("rbac_access_denied") or (
            common.HasField("metadata") and _rbac_denied_by_metadata(common.metadata)))
        if common.HasField("duration"):
            d = common.duration
            self.duration_ms = round(d.seconds * 1000.0 + d.nanos / 1e6, 3)
        else:   # rare (no response): the full record knows the fallbacks
            self.duration_ms = self.full().duration_ms

    def full(self) -> L7Record:
        rec = self._full
        if rec is None:
            rec = self._full = record_from_entry(self.entry, self.node_id, self.log_name, self.tags)
            self.entry = None     # the L7Record has everything now
        return rec

    def __getattr__(self, name: str) -> AnyT:
        # Only reached for names that are not slots already set: every other L7Record field.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    def __repr__(self) -> str:
        return f"LazyL7Record({self.full()!r})"


def _rbac_denied_by_metadata(metadata) -> bool:
    fm = metadata.filter_metadata
    if RBAC_METADATA_KEY not in fm:
        return False
    md = fm[RBAC_METADATA_KEY].fields
    return md.get("enforced_engine_result") is not None and md["enforced_engine_result"].string_value == "denied"


_METHODS: dict[int, str] = {}


def _method_name(value: int) -> str:
    from envoy.config.core.v3 import base_pb2

    name = _METHODS[value] = base_pb2.RequestMethod.Name(value)
    return name


Callback = Callable[[L7Record], "None | Awaitable[None]"]


class AccessLogReceiver:
    """gRPC AccessLogService servicer; calls `callback(record)` for every HTTP entry.

    Add it to the xDS server's gRPC server (`XdsServer.start(servicers=[receiver])`) or call
    `start()` for its own server.
    """

    def __init__(self, callback: Callback) -> None:
        self._callback = callback
        self._server: grpc.aio.Server | None = None
        self.received = 0
        self.errors = 0

    def add_to_server(self, server: "grpc.aio.Server") -> None:
        from envoy.service.accesslog.v3 import als_pb2_grpc

        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_Servicer(self), server)

    async def start(self, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None) -> str:
        import grpc

        server = grpc.aio.server()
        self.add_to_server(server)
        target = f"unix:{unix_path}" if unix_path else f"{host}:{port}"
        bound = server.add_insecure_port(target)
        await server.start()
        self._server = server
        return target if unix_path else f"{host}:{bound}"

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _deliver(self, record: L7Record) -> None:
        self.received += 1
        try:
            result = self._callback(record)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a consumer bug must not kill Envoy's log stream
            self.errors += 1
            log.exception("access log callback failed")


class _Servicer:
    def __init__(self, receiver: AccessLogReceiver) -> None:
        self._r = receiver

    async def StreamAccessLogs(self, request_iterator, context):  # noqa: N802
        from envoy.service.accesslog.v3 import als_pb2

        r = self._r
        node_id = log_name = ""
        # Custom tags are literals of the access-log config: one stream carries one config's entries
        # (Envoy keys its gRPC loggers by config), so they are copied once per stream and shared.
        tags: dict[str, str] | None = None
        sync = not inspect.iscoroutinefunction(r._callback)
        async for msg in request_iterator:
            if msg.HasField("identifier"):
                node_id, log_name = msg.identifier.node.id, msg.identifier.log_name
            for entry in msg.http_logs.log_entry:
                try:
                    if tags is None:
                        tags = dict(entry.common_properties.custom_tags)
                    record = LazyL7Record(entry, node_id, log_name, tags)
                except Exception:
                    r.errors += 1
                    log.exception("cannot decode an access log entry")
                    continue
                if sync:
                    r.received += 1
                    try:
                        r._callback(record)
                    except Exception:  # a consumer bug must not kill Envoy's log stream
                        r.errors += 1
                        log.exception("access log callback failed")
                else:
                    await r._deliver(record)
        return als_pb2.StreamAccessLogsResponse()


__all__ = ["AccessLogReceiver", "L7Record", "LazyL7Record", "record_from_entry"]
