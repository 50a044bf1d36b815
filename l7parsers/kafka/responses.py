"""Responses the proxy sends itself for denied requests, encoded by kafka-python's schema-driven codec.

A denied request gets a well-formed response of its own API version (header version and correlation id
included) that mirrors what it asked for: every topic (and partition) it named comes back with
TOPIC_AUTHORIZATION_FAILED (29); APIs without topics get their own authorization error at the top level
(GROUP_AUTHORIZATION_FAILED 30 for group APIs, TRANSACTIONAL_ID_AUTHORIZATION_FAILED 53 for
transactional ones, CLUSTER_AUTHORIZATION_FAILED 31 otherwise). This is what a broker with ACLs answers,
so clients raise their usual authorization exception (kafka-python TopicAuthorizationFailedError, ...).

The request is decoded in full here (kafka-python's generic decoder): only on the deny path, never for
requests that are forwarded. Responses this module cannot build (an API or version kafka-python does not
know) return None; the proxy then closes the connection, which fails closed.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any, Mapping

from l7parsers.kafka import apis
from l7parsers.kafka.events import Request

# Response array ← request array it mirrors, per API (kafka-python's snake_case field names). Nested
# arrays are looked up inside the mirrored element, so "partitions" under "topics" mirrors that topic's
# partitions. A request array of plain values (topic names, partition numbers, group ids) becomes
# elements whose key field is set from the value (see _SCALAR_KEY).
_MIRROR: dict[int, dict[str, str]] = {
    0: {"responses": "topic_data", "partition_responses": "partition_data"},
    1: {"responses": "topics", "partitions": "partitions"},
    2: {"topics": "topics", "partitions": "partitions"},
    3: {"topics": "topics"},
    8: {"topics": "topics", "partitions": "partitions"},
    9: {"topics": "topics", "partitions": "partition_indexes", "groups": "groups"},
    10: {"coordinators": "coordinator_keys"},
    15: {"groups": "groups"},
    19: {"topics": "topics"},
    20: {"responses": "topics|topic_names"},
    21: {"topics": "topics", "partitions": "partitions"},
    23: {"topics": "topics", "partitions": "partitions"},
    24: {"results_by_transaction": "transactions", "topic_results": "topics",
         "results_by_partition": "partitions", "results_by_topic_v3_and_below": "v3_and_below_topics"},
    27: {"markers": "markers", "topics": "topics", "partitions": "partition_indexes"},
    28: {"topics": "topics", "partitions": "partitions"},
    30: {"results": "creations"},
    31: {"filter_results": "filters"},
    34: {"results": "dirs.topics", "partitions": "partitions"},
    35: {"results": "@one"},
    32: {"results": "resources"},
    33: {"responses": "resources"},
    37: {"results": "topics"},
    42: {"results": "groups_names"},
    43: {"replica_election_results": "topic_partitions", "partition_result": "partitions"},
    44: {"responses": "resources"},
    45: {"responses": "topics", "partitions": "partitions"},
    49: {"entries": "entries"},
    51: {"results": "deletions|upsertions"},
    47: {"topics": "topics", "partitions": "partitions"},
    61: {"topics": "topics", "partitions": "partition_indexes"},
    65: {"transaction_states": "transactional_ids"},
    75: {"topics": "topics"},
}

# Fields copied from a request element into the response element it mirrors (response name ← request
# names tried in order).
_COPY: dict[str, tuple[str, ...]] = {
    "name": ("name", "topic"), "topic": ("topic", "name"), "topic_id": ("topic_id",),
    "index": ("index",), "partition_index": ("partition_index", "partition"), "partition": ("partition",),
    "group_id": ("group_id",), "transactional_id": ("transactional_id",),
    "resource_type": ("resource_type",), "resource_name": ("resource_name",),
}
# For request arrays of plain values: which response field takes the value.
_SCALAR_KEY = ("name", "topic", "partition_index", "partition_id", "group_id", "key", "transactional_id")

_GROUP_APIS = frozenset({11, 12, 13, 14, 15, 16, 42, 68, 69})
_TXN_APIS = frozenset({25, 26, 65})
# APIs whose denial is carried per topic (top-level error stays NONE, as a broker's authorizer does).
_TOPIC_APIS = frozenset({0, 1, 2, 3, 8, 19, 20, 21, 23, 24, 27, 28, 32, 33, 37, 43, 44, 45, 47, 61, 75})


def top_level_error(req: Request) -> int:
    """The authorization error an API without per-topic results answers with."""
    if req.api_key in _TOPIC_APIS:
        return apis.NONE
    return _api_error(req)


def _api_error(req: Request) -> int:
    if req.api_key in _GROUP_APIS or (req.api_key == 9 and not req.topics and not req.topic_ids):
        return apis.GROUP_AUTHORIZATION_FAILED
    if req.api_key == 10:
        return apis.TRANSACTIONAL_ID_AUTHORIZATION_FAILED if req.transactional_ids else apis.GROUP_AUTHORIZATION_FAILED
    if req.api_key in _TXN_APIS or (req.api_key == 22 and req.transactional_id is not None):
        return apis.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    return apis.CLUSTER_AUTHORIZATION_FAILED


def element_error(req: Request, array: str) -> int:
    """The error each mirrored element carries."""
    if req.api_key in (15, 42) or array == "groups":
        return apis.GROUP_AUTHORIZATION_FAILED
    if req.api_key in _TOPIC_APIS:
        return apis.TOPIC_AUTHORIZATION_FAILED
    return _api_error(req)


@lru_cache(maxsize=1)
def _classes() -> dict[tuple[int, str], Any]:
    from kafka.protocol.api_message import ApiMessage
    for mod in ("producer", "consumer", "metadata", "admin"):
        importlib.import_module(f"kafka.protocol.{mod}")
    out: dict[tuple[int, str], Any] = {}

    def walk(cls: Any) -> None:
        for sub in cls.__subclasses__():
            if getattr(sub, "_class_version", None) is None and getattr(sub, "_json", None):
                out.setdefault((sub.API_KEY, sub.type), sub)
            walk(sub)
    walk(ApiMessage)
    # APIs kafka-python does not ship: classes from our own schema files, same codec.
    from kafka.protocol.api_message import ApiMessageData
    from l7parsers.kafka.schemas import EXTRA_PACKAGE, extra_names
    for name in extra_names():
        cls = ApiMessageData(name, (ApiMessage,), {"__module__": __name__}, load_json=EXTRA_PACKAGE)
        out.setdefault((cls.API_KEY, cls.type), cls)
    return out


def message_class(api_key: int, kind: str) -> Any | None:
    """kafka-python's message class for an API key ("request" or "response"), or None."""
    return _classes().get((api_key, kind))


def decode_request_body(req: Request) -> Any:
    """kafka-python's full decode of a request body (deny path, CLI, tests)."""
    cls = message_class(req.api_key, "request")
    if cls is None or req.api_version > cls.max_version:
        raise LookupError(f"no schema for API key {req.api_key} version {req.api_version}")
    return cls.decode(req.body, version=req.api_version)


def _field_default(field: Any, version: int) -> Any:
    if field.is_struct() and not field.is_array():
        if field.nullable_for_version_q(version) or field.tag is not None:
            return None
        return _build(field, None, version, {}, None)
    default = field.default
    return list(default) if isinstance(default, list) else default


def _build(struct: Any, src: Any, version: int, mirror: Mapping[str, str], ctx: Any) -> Any:
    """One response struct (or element): keys copied from `src`, errors set, nested arrays mirrored."""
    values: dict[str, Any] = {}
    for name, field in struct.fields.items():
        if not field.for_version_q(version):
            continue
        if field.tag is not None and field.tagged_field_q(version):
            continue  # tagged fields are optional: leave them out
        if name.endswith("error_code"):
            values[name] = ctx.element_code(struct) if src is not None else ctx.top_code
        elif name == "error_message" and field.nullable_for_version_q(version):
            values[name] = None
        elif field.is_struct_array() and name in mirror:
            values[name] = [_element(field, item, version, mirror, ctx, name)
                            for item in _source_items(src if src is not None else ctx.request, mirror[name])]
        elif src is not None and name in _COPY and not isinstance(src, _Scalar):
            for candidate in _COPY[name]:
                value = getattr(src, candidate, None)
                if value is not None:
                    values[name] = value
                    break
            else:
                values[name] = _field_default(field, version)
        else:
            values[name] = _field_default(field, version)
    return struct.data_class(version=version, **values)


def _element(field: Any, item: Any, version: int, mirror: Mapping[str, str], ctx: Any, array: str) -> Any:
    struct = field.array_of
    if isinstance(item, _Scalar):
        return _build(struct, item, version, mirror, ctx._for(array))
    if isinstance(item, (str, int)):
        elem = _build(struct, _Scalar(), version, mirror, ctx._for(array))
        for key in _SCALAR_KEY:
            if key in struct.fields and struct.fields[key].for_version_q(version):
                setattr(elem, key, item)
                break
        return elem
    return _build(struct, item, version, mirror, ctx._for(array))


class _Scalar:
    """Stands for a request element that is a plain value (its key is set after the build)."""


def _source_items(src: Any, names: str) -> list:
    """The request elements a response array mirrors: "a|b" = the first non-empty of a and b, "a.b" = every
    b of every a (flattened), "@one" = a single element with no key."""
    if names == "@one":
        return [_Scalar()]
    for name in names.split("|"):
        if "." in name:
            outer, inner = name.split(".", 1)
            items = [x for o in (getattr(src, outer, None) or []) for x in (getattr(o, inner, None) or [])]
        else:
            items = getattr(src, name, None)
        if items:
            return list(items)
    return []


class _Ctx:
    def __init__(self, request: Any, req: Request, top_code: int, array: str = "") -> None:
        self.request = request
        self.req = req
        self.top_code = top_code
        self.array = array

    def _for(self, array: str) -> "_Ctx":
        return _Ctx(self.request, self.req, self.top_code, array)

    def element_code(self, struct: Any) -> int:
        if self.req is None:
            return self.top_code
        return element_error(self.req, self.array)


def denied_response(req: Request, *, top_code: int | None = None) -> bytes | None:
    """The whole response frame (size prefix included) denying `req`, or None when it cannot be built."""
    resp_cls = message_class(req.api_key, "response")
    req_cls = message_class(req.api_key, "request")
    if resp_cls is None or req_cls is None or req.api_version > min(resp_cls.max_version, req_cls.max_version):
        return None
    try:
        request = req_cls.decode(req.body, version=req.api_version)
    except Exception:  # kafka-python raises assorted errors on bodies it cannot read
        return None
    code = top_level_error(req) if top_code is None else top_code
    version = req.api_version
    if req.api_key == 18:
        version = 0  # an ApiVersions error response is always sent as v0 (clients fall back to it)
    ctx = _Ctx(request, req, code)
    body = _build(resp_cls._struct, None, version, _MIRROR.get(req.api_key, {}), ctx)
    msg = resp_cls[version](**{name: getattr(body, name) for name, f in resp_cls._struct.fields.items()
                               if f.for_version_q(version) and not (f.tag is not None and f.tagged_field_q(version))})
    msg.with_header(correlation_id=req.correlation_id)
    return msg.encode(header=True, framed=True)  # ApiVersionsResponse keeps header v0 by itself


def metadata_request_without(req: Request, denied: frozenset[str], name_of_id: Any = None) -> bytes:
    """The Metadata request re-encoded without the denied topics (an empty list, never null: null means
    "all topics")."""
    cls = message_class(3, "request")
    body = cls.decode(req.body, version=req.api_version)

    def name(t: Any) -> str | None:
        if t.name is not None:
            return t.name
        topic_id = getattr(t, "topic_id", None)
        return name_of_id(topic_id.bytes) if topic_id is not None and name_of_id else None
    body.topics = [t for t in (body.topics or []) if name(t) not in denied]
    body.with_header(correlation_id=req.correlation_id, client_id=req.client_id)
    return body.encode(header=True, framed=True)


def metadata_response_with_denied(frame: bytes, version: int, denied: tuple[str, ...]) -> bytes:
    """The broker's Metadata response plus a TOPIC_AUTHORIZATION_FAILED entry per denied topic."""
    cls = message_class(3, "response")
    resp = cls.decode(frame, version=version, header=True, framed=True)
    topic_field = cls._struct.fields["topics"]
    elem_struct = topic_field.array_of
    for t in denied:
        elem = _build(elem_struct, _Scalar(), version, {}, _Ctx(None, None, apis.TOPIC_AUTHORIZATION_FAILED))
        elem.error_code = apis.TOPIC_AUTHORIZATION_FAILED
        elem.name = t
        resp.topics.append(elem)
    resp.with_header(correlation_id=resp.header.correlation_id)
    return resp.encode(header=True, framed=True)


def metadata_response_filtered(frame: bytes, version: int, keep: Any) -> bytes:
    """The broker's all-topics Metadata response with only the topics `keep(name)` allows."""
    cls = message_class(3, "response")
    resp = cls.decode(frame, version=version, header=True, framed=True)
    resp.topics = [t for t in (resp.topics or []) if t.name is not None and keep(t.name)]
    resp.with_header(correlation_id=resp.header.correlation_id)
    return resp.encode(header=True, framed=True)
