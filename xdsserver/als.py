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


@dataclass(frozen=True, slots=True)
class L7Record:
    """One HTTP/gRPC request as Envoy saw it."""

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
    if address.HasField("socket_address"):
        return address.socket_address.address, address.socket_address.port_value
    if address.HasField("pipe"):
        return address.pipe.path, 0
    return "", 0


def _ms(duration) -> float:
    return duration.seconds * 1000.0 + duration.nanos / 1e6


def record_from_entry(entry, node_id: str = "", log_name: str = "") -> L7Record:
    """An envoy.data.accesslog.v3.HTTPAccessLogEntry → L7Record (pure)."""
    common, req, resp = entry.common_properties, entry.request, entry.response
    src_ip, src_port = _addr(common.downstream_remote_address)
    dst_ip, dst_port = _addr(common.downstream_local_address)
    up_ip, up_port = _addr(common.upstream_remote_address)
    flags = tuple(sorted(f.name for f, v in common.response_flags.ListFields() if v is True))
    if common.HasField("duration"):
        duration = _ms(common.duration)
    elif common.HasField("time_to_last_downstream_tx_byte"):
        duration = _ms(common.time_to_last_downstream_tx_byte)
    else:
        duration = 0.0
    grpc_raw = resp.response_trailers.get("grpc-status") or resp.response_headers.get("grpc-status")
    grpc_status = int(grpc_raw) if grpc_raw and grpc_raw.isdigit() else None
    grpc_message = (resp.response_trailers.get("grpc-message")
                    or resp.response_headers.get("grpc-message") or "")
    details = resp.response_code_details
    rbac_denied = details.startswith("rbac_access_denied")
    if not rbac_denied and RBAC_METADATA_KEY in common.metadata.filter_metadata:
        md = common.metadata.filter_metadata[RBAC_METADATA_KEY]
        rbac_denied = md.fields.get("enforced_engine_result") is not None and \
            md.fields["enforced_engine_result"].string_value == "denied"
    start = common.start_time.seconds + common.start_time.nanos / 1e9
    return L7Record(
        time=start, node_id=node_id, log_name=log_name,
        source_ip=src_ip, source_port=src_port, destination_ip=dst_ip, destination_port=dst_port,
        method=req.request_method and _method_name(req.request_method),
        authority=req.authority, path=req.path,
        protocol=_PROTOCOLS.get(entry.protocol_version, ""),
        response_code=resp.response_code.value, response_code_details=details,
        response_flags=flags, duration_ms=round(duration, 3),
        grpc_status=grpc_status, grpc_message=grpc_message,
        upstream_cluster=common.upstream_cluster,
        upstream_address=_join(up_ip, up_port) if up_ip else "",
        route_name=common.route_name, rbac_denied=rbac_denied,
        content_type=req.request_headers.get("content-type", ""),
        tags=dict(common.custom_tags))


def _method_name(value: int) -> str:
    from envoy.config.core.v3 import base_pb2

    return base_pb2.RequestMethod.Name(value)


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

        node_id = log_name = ""
        async for msg in request_iterator:
            if msg.HasField("identifier"):
                node_id, log_name = msg.identifier.node.id, msg.identifier.log_name
            for entry in msg.http_logs.log_entry:
                try:
                    record = record_from_entry(entry, node_id, log_name)
                except Exception:
                    self._r.errors += 1
                    log.exception("cannot decode an access log entry")
                    continue
                await self._r._deliver(record)
        return als_pb2.StreamAccessLogsResponse()


__all__ = ["AccessLogReceiver", "L7Record", "record_from_entry"]
