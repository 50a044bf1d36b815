"""Lean readers compiled from Kafka's message schemas: find what policy needs, skip everything else.

For each (API key, version) the request schema is compiled once into nested closures. A closure reads
one field and returns the new position; fields nobody needs are skipped (runs of fixed-size fields
become one jump; `bytes`/`records` — Produce's record batches — are skipped by their length, never
decoded). Fields that matter are tagged with a *role* and appended to an output list as
``(role, value)``:

- ``topic``     a field whose schema `entityType` is `topicName` (names), strings or string arrays
- ``topic_id``  a `uuid` field named `TopicId` (Fetch v13+, Produce v13+, OffsetCommit v10+, ...)
- ``group``     entityType `groupId`;  ``txn`` entityType `transactionalId`
- ``acks``      Produce's `Acks` (acks=0 means the broker sends no response)
- ``rtype``/``rname`` DescribeConfigs/AlterConfigs resources (a name is a topic when type is 2)
- ``ckey``/``ckeytype`` FindCoordinator keys and their type (group, transaction, share)
- ``all_topics`` a Metadata request whose topic list is null: "every topic"

Every read is bounds-checked (struct.error / IndexError are turned into `FrameError` by the caller),
array lengths are checked against the bytes left, and strings are decoded as strict UTF-8.
"""

from __future__ import annotations

from functools import lru_cache
from struct import Struct
from typing import Any, Callable

from l7parsers.kafka.schemas import ApiSchema, in_range, parse_versions, schema_for

Reader = Callable[[bytes, int, list], int]

_I8 = Struct(">b")
_I16 = Struct(">h")
_I32 = Struct(">i")

FIXED_SIZES = {"bool": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8,
               "float64": 8, "uuid": 16}

# Kafka ConfigResource types: 2 = TOPIC (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs).
CONFIG_RESOURCE_TOPIC = 2
_CONFIG_APIS = frozenset({32, 33, 44})
_FIND_COORDINATOR = 10
_PRODUCE = 0
_METADATA = 3


class FrameError(Exception):
    """A frame that does not follow its schema (the caller turns it into a ProtocolError event)."""


def read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise FrameError("varint longer than 5 bytes")


def read_string(buf: bytes, pos: int, compact: bool) -> tuple[str | None, int]:
    """A (nullable) Kafka string: INT16 length (-1 = null), or compact (uvarint length+1, 0 = null)."""
    if compact:
        n = buf[pos]
        if n < 0x80:  # one-byte varint: every string shorter than 127 bytes
            pos += 1
        else:
            n, pos = read_uvarint(buf, pos)
        n -= 1
    else:
        n = _I16.unpack_from(buf, pos)[0]
        pos += 2
    if n < 0:
        if n != -1:
            raise FrameError(f"negative string length {n}")
        return None, pos
    end = pos + n
    if end > len(buf):
        raise FrameError("string runs past the end of the frame")
    try:
        return buf[pos:end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise FrameError(f"string is not valid UTF-8 at byte {pos + exc.start}") from None


def _read_len(buf: bytes, pos: int, compact: bool) -> tuple[int, int]:
    """A length/count prefix: INT32 (-1 = null) or compact uvarint+1 (0 = null). Null → -1."""
    if compact:
        n, pos = read_uvarint(buf, pos)
        return n - 1, pos
    return _I32.unpack_from(buf, pos)[0], pos + 4


def skip_tagged_fields(buf: bytes, pos: int) -> int:
    if buf[pos] == 0:  # the usual case: no tagged fields
        return pos + 1
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise FrameError("tagged field runs past the end of the frame")
    return pos


def _role_of(api_key: int, field: dict[str, Any], direction: str) -> str | None:
    name = field["name"]
    typ = field["type"]
    entity = field.get("entityType")
    if direction == "response":
        # Responses are read only to learn topic ID → name (Metadata, CreateTopics, DescribeTopicPartitions).
        if entity == "topicName":
            return "topic"
        if typ == "uuid" and name == "TopicId":
            return "topic_id"
        return None
    if entity == "topicName":
        return "topic"
    if entity == "groupId":
        return "group"
    if entity == "transactionalId":
        return "txn"
    if typ == "uuid" and name == "TopicId":
        return "topic_id"
    if api_key == _PRODUCE and name == "Acks":
        return "acks"
    if api_key in _CONFIG_APIS and name == "ResourceType":
        return "rtype"
    if api_key in _CONFIG_APIS and name == "ResourceName":
        return "rname"
    if api_key == _FIND_COORDINATOR and name in ("Key", "CoordinatorKeys"):
        return "ckey"
    if api_key == _FIND_COORDINATOR and name == "KeyType":
        return "ckeytype"
    return None


class _Compiler:
    def __init__(self, api_key: int, version: int, flexible: bool, direction: str) -> None:
        self.api_key = api_key
        self.version = version
        self.flexible = flexible
        self.direction = direction

    def struct(self, fields: list[dict[str, Any]]) -> tuple[Reader, int]:
        """A reader for a struct's fields at this version (+ its tagged-field section when flexible)."""
        ops: list[Reader] = []
        min_size = 0
        pending_skip = 0  # consecutive fixed-size fields without a role become one jump
        tagged: dict[int, Reader] = {}
        v = self.version
        for f in fields:
            if not in_range(parse_versions(f.get("versions")), v):
                continue
            if "tag" in f:
                if self.flexible and in_range(parse_versions(f.get("taggedVersions")), v):
                    reader, _ = self.field(f)
                    tagged[int(f["tag"])] = reader
                continue
            role = _role_of(self.api_key, f, self.direction)
            size = FIXED_SIZES.get(f["type"])
            if size is not None and role is None:
                pending_skip += size
                min_size += size
                continue
            if pending_skip:
                ops.append(_skip(pending_skip))
                pending_skip = 0
            reader, fmin = self.field(f)
            ops.append(reader)
            min_size += fmin
        if pending_skip:
            ops.append(_skip(pending_skip))
        if self.flexible:
            ops.append(_tag_section(tagged))
            min_size += 1
        return _sequence(ops), min_size

    def field(self, f: dict[str, Any]) -> tuple[Reader, int]:
        v = self.version
        typ: str = f["type"]
        role = _role_of(self.api_key, f, self.direction)
        nullable = in_range(parse_versions(f.get("nullableVersions")), v)
        compact = self.flexible and (f.get("flexibleVersions") is None
                                     or in_range(parse_versions(f["flexibleVersions"]), v))
        if typ.startswith("[]"):
            inner = typ[2:]
            if "fields" in f:
                elem, emin = self.struct(f["fields"])
            elif inner in FIXED_SIZES:
                elem, emin = _fixed_value(inner, role), FIXED_SIZES[inner]
            elif inner == "string":
                elem, emin = _string(compact, role, False), 1
            else:
                raise ValueError(f"unsupported array element type {inner!r}")
            null_role = "all_topics" if (self.api_key == _METADATA and self.direction == "request"
                                         and f["name"] == "Topics") else None
            return _array(elem, max(emin, 1), compact, nullable, f["name"], null_role), 1
        if "fields" in f:  # a nested struct (nullable ones carry an INT8 presence marker)
            inner_reader, smin = self.struct(f["fields"])
            return (_nullable_struct(inner_reader) if nullable else inner_reader), (1 if nullable else smin)
        if typ in FIXED_SIZES:
            return _fixed_value(typ, role), FIXED_SIZES[typ]
        if typ == "string":
            return _string(compact, role, nullable), 1
        if typ in ("bytes", "records"):
            return _bytes(compact, nullable or typ == "records"), 1
        raise ValueError(f"unsupported field type {typ!r} in {f['name']}")


def _sequence(ops: list[Reader]) -> Reader:
    if len(ops) == 1:
        return ops[0]
    ops_t = tuple(ops)

    def read(buf: bytes, pos: int, out: list) -> int:
        for op in ops_t:
            pos = op(buf, pos, out)
        return pos
    return read


def _skip(n: int) -> Reader:
    def read(buf: bytes, pos: int, out: list) -> int:
        return pos + n
    return read


def _fixed_value(typ: str, role: str | None) -> Reader:
    size = FIXED_SIZES[typ]
    if role is None:
        return _skip(size)
    if typ == "uuid":
        def read_uuid(buf: bytes, pos: int, out: list) -> int:
            end = pos + 16
            if end > len(buf):
                raise FrameError("uuid runs past the end of the frame")
            out.append((role, bytes(buf[pos:end])))
            return end
        return read_uuid
    fmt = {1: _I8, 2: _I16, 4: _I32}.get(size)
    if fmt is None:
        return _skip(size)
    unpack = fmt.unpack_from

    def read_int(buf: bytes, pos: int, out: list) -> int:
        out.append((role, unpack(buf, pos)[0]))
        return pos + size
    return read_int


def _string(compact: bool, role: str | None, nullable: bool) -> Reader:
    def read(buf: bytes, pos: int, out: list) -> int:
        value, pos = read_string(buf, pos, compact)
        if value is None:
            if not nullable:
                raise FrameError("null in a non-nullable string")
        elif role is not None:
            out.append((role, value))
        return pos
    return read


def _bytes(compact: bool, nullable: bool) -> Reader:
    def read(buf: bytes, pos: int, out: list) -> int:
        n, pos = _read_len(buf, pos, compact)
        if n < 0:
            if n != -1 or not nullable:
                raise FrameError(f"invalid bytes length {n}")
            return pos
        pos += n
        if pos > len(buf):
            raise FrameError("bytes field runs past the end of the frame")
        return pos
    return read


def _array(elem: Reader, elem_min: int, compact: bool, nullable: bool, name: str,
           null_role: str | None = None) -> Reader:
    def read(buf: bytes, pos: int, out: list) -> int:
        n, pos = _read_len(buf, pos, compact)
        if n < 0:
            if n != -1 or not nullable:
                raise FrameError(f"invalid length {n} for array {name}")
            if null_role is not None:
                out.append((null_role, True))
            return pos
        if n * elem_min > len(buf) - pos:
            raise FrameError(f"array {name} claims {n} elements, more than the frame holds")
        for _ in range(n):
            pos = elem(buf, pos, out)
        return pos
    return read


def _nullable_struct(inner: Reader) -> Reader:
    def read(buf: bytes, pos: int, out: list) -> int:
        marker = _I8.unpack_from(buf, pos)[0]
        pos += 1
        if marker < 0:
            return pos
        return inner(buf, pos, out)
    return read


def _tag_section(tagged: dict[int, Reader]) -> Reader:
    if not tagged:
        return lambda buf, pos, out: skip_tagged_fields(buf, pos)

    def read(buf: bytes, pos: int, out: list) -> int:
        count, pos = read_uvarint(buf, pos)
        for _ in range(count):
            tag, pos = read_uvarint(buf, pos)
            size, pos = read_uvarint(buf, pos)
            end = pos + size
            if end > len(buf):
                raise FrameError("tagged field runs past the end of the frame")
            reader = tagged.get(tag)
            if reader is not None and reader(buf, pos, out) != end:
                raise FrameError(f"tagged field {tag} does not match its declared size")
            pos = end
        return pos
    return read


@lru_cache(maxsize=4096)
def request_reader(api_key: int, version: int) -> Reader | None:
    """The compiled body reader for a request, or None when the schema does not know this key/version."""
    schema = schema_for(api_key)
    if schema is None or not 0 <= version <= schema.max_version:
        return None
    return _Compiler(api_key, version, schema.is_flexible(version), "request").struct(schema.request["fields"])[0]


# Responses whose topic ID → name pairs the proxy learns (Metadata, CreateTopics, DescribeTopicPartitions).
LEARN_TOPIC_IDS_FROM = frozenset({3, 19, 75})


@lru_cache(maxsize=1024)
def response_reader(api_key: int, version: int) -> Reader | None:
    schema = schema_for(api_key)
    if schema is None or schema.response is None or not 0 <= version <= schema.max_version:
        return None
    return _Compiler(api_key, version, response_is_flexible(schema, version), "response").struct(
        schema.response["fields"])[0]


def response_is_flexible(schema: ApiSchema, version: int) -> bool:
    return schema.is_flexible(version)


def request_header_version(api_key: int, version: int) -> int | None:
    """1 or 2 (flexible) for known keys (0 for ControlledShutdown v0); None when the key is unknown.

    Versions above the schema's maximum are assumed flexible when the API's flexible range is open-ended
    ("N+"), which is how Kafka evolves them."""
    if api_key == 7 and version == 0:
        return 0
    schema = schema_for(api_key)
    if schema is None:
        return None
    return 2 if schema.is_flexible(version) else 1


@lru_cache(maxsize=4096)
def request_plan(api_key: int, version: int) -> tuple[int | None, Reader | None]:
    """(request header version, body reader) in one cached lookup for the hot path."""
    header_version = request_header_version(api_key, version)
    return header_version, (request_reader(api_key, version) if header_version is not None else None)


def response_header_version(api_key: int, version: int) -> int:
    """ApiVersions responses always use header v0 (a client must be able to read them before it knows
    the broker's versions); other flexible versions use v1."""
    if api_key == 18:
        return 0
    schema = schema_for(api_key)
    return 1 if schema is not None and schema.is_flexible(version) else 0
