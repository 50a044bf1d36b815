"""xDS resource helpers: type URLs, packing into Any, resource names and versions.

The translation module (xdsserver.translate) produces plain dicts in Envoy's proto3 JSON form, so it
stays free of protobuf; this module turns them into typed messages packed in `Any`. Protobuf and the
Envoy protos are imported lazily so that modules the CLI imports stay cheap.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import TYPE_CHECKING, Any as AnyT, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from google.protobuf.any_pb2 import Any
    from google.protobuf.message import Message

from mesh.errors import ValidationError

_PREFIX = "type.googleapis.com/"


class TypeURL(str, Enum):
    """The resource types Ostium serves, in the order ADS sends them (clusters before listeners)."""

    CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
    ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
    LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
    SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

    def __str__(self) -> str:  # plain URL in logs and JSON
        return self.value

    @property
    def short(self) -> str:
        """A readable name for status output: Cluster, Listener, ..."""
        return self.value.rsplit(".", 1)[-1]


# ADS ordering (Envoy's xDS protocol doc, "eventual consistency considerations"): CDS before EDS,
# then LDS before RDS, so a listener never references a cluster Envoy has not seen yet.
PUSH_ORDER: tuple[str, ...] = tuple(t.value for t in TypeURL)

# Types whose subscription is a wildcard by default (Envoy asks for "everything" for LDS and CDS).
WILDCARD_TYPES: frozenset[str] = frozenset({TypeURL.CLUSTER.value, TypeURL.LISTENER.value})

# Modules whose import registers the message types we pack from JSON (typed_config "@type" lookups).
_PROTO_MODULES = (
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
    "envoy.extensions.access_loggers.grpc.v3.als_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.config.bootstrap.v3.bootstrap_pb2",
)
_loaded = False


def load_protos() -> None:
    """Import the Envoy proto modules once so their types are in the default descriptor pool."""
    global _loaded  # a one-way import latch, not mutable state anyone reads
    if _loaded:
        return
    import importlib

    for name in _PROTO_MODULES:
        importlib.import_module(name)
    _loaded = True


def message_class(type_url: str) -> type["Message"]:
    """The generated class for a type URL (after load_protos)."""
    load_protos()
    from google.protobuf import message_factory, symbol_database

    full_name = type_url.removeprefix(_PREFIX)
    try:
        desc = symbol_database.Default().pool.FindMessageTypeByName(full_name)
    except KeyError as exc:
        raise ValidationError(f"unknown resource type {type_url!r}", path="@type") from exc
    return message_factory.GetMessageClass(desc)


def from_dict(type_url: str, data: Mapping[str, AnyT]) -> "Message":
    """Parse Envoy's proto3 JSON form into a typed message; a bad field is a ValidationError."""
    from google.protobuf import json_format

    cls = message_class(type_url)
    msg = cls()
    try:
        json_format.ParseDict(dict(data), msg)
    except json_format.ParseError as exc:
        raise ValidationError(f"invalid {full_type_name(type_url)}: {exc}",
                              path=str(data.get("name", ""))) from exc
    return msg


def full_type_name(type_url: str) -> str:
    return type_url.removeprefix(_PREFIX)


def pack(message: "Message") -> "Any":
    """Pack a typed message into Any with Envoy's type URL prefix."""
    from google.protobuf.any_pb2 import Any

    out = Any()
    out.Pack(message, type_url_prefix="type.googleapis.com/")
    return out


def to_any(resource: "Message | Any | Mapping[str, AnyT]", type_url: str | None = None) -> "Any":
    """Accept a dict (with type_url), a typed message or an already packed Any."""
    from google.protobuf.any_pb2 import Any

    if isinstance(resource, Any):
        return resource
    if isinstance(resource, Mapping):
        if type_url is None:
            raise ValueError("a dict resource needs its type_url")
        return pack(from_dict(type_url, resource))
    return pack(resource)


def resource_name(resource: "Any") -> str:
    """The name Envoy keys a resource by (Cluster/Listener/RouteConfiguration .name,
    ClusterLoadAssignment .cluster_name)."""
    msg = message_class(resource.type_url)()
    resource.Unpack(msg)
    if resource.type_url == TypeURL.ENDPOINT.value:
        return msg.cluster_name  # type: ignore[attr-defined]
    return msg.name  # type: ignore[attr-defined]


def resource_version(resource: "Any") -> str:
    """A content hash: the same resource always has the same version, on every agent restart.

    Deterministic serialization sorts map fields so equal messages hash equally.
    """
    data = resource.type_url.encode() + b"\0" + _deterministic_bytes(resource)
    return hashlib.sha256(data).hexdigest()[:16]


def _deterministic_bytes(resource: "Any") -> bytes:
    # Any.value was serialized by Pack (non-deterministically for maps); re-serialize the inner
    # message deterministically so map ordering never changes the hash.
    try:
        msg = message_class(resource.type_url)()
        resource.Unpack(msg)
        return msg.SerializeToString(deterministic=True)
    except ValidationError:
        return bytes(resource.value)
