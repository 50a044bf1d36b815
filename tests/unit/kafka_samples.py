"""Request frames for every API and version, built from Kafka's schemas and encoded by kafka-python.

`sample_request(api_key, version)` fills every field of the schema with recognisable values (topics
"orders"/"payments", group "billing", transactional id "txn-7", a topic ID) and returns the framed bytes
plus what the parser should find in them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from l7parsers.kafka.responses import message_class

TOPICS = ("orders", "payments")
GROUP = "billing"
TXN = "txn-7"
TOPIC_ID = uuid.UUID("5e4c7132-977c-4102-ba2a-8bd2a5dde28e")
CLIENT_ID = "client-é"  # non-ASCII on purpose


@dataclass
class Expected:
    topics: list[str] = field(default_factory=list)
    topic_ids: list[bytes] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    txns: list[str] = field(default_factory=list)


def _value(api_key: int, f, version: int, exp: Expected, index: int):
    j = f._json
    name = j["name"]
    typ = j["type"]
    entity = j.get("entityType")
    if typ.startswith("[]"):
        inner = typ[2:]
        if f.is_struct_array():
            return [_struct(api_key, f.array_of, version, exp, i) for i in range(2)]
        if inner == "string":
            vals = [_scalar(api_key, name, inner, entity, exp, i) for i in range(2)]
            return vals
        return [1, 2] if inner.startswith("int") else []
    if f.is_struct():
        return _struct(api_key, f, version, exp, index)
    return _scalar(api_key, name, typ, entity, exp, index)


def _scalar(api_key: int, name: str, typ: str, entity: str | None, exp: Expected, index: int):
    if typ == "string":
        if entity == "topicName":
            exp.topics.append(TOPICS[index % 2])
            return TOPICS[index % 2]
        if entity == "groupId":
            exp.groups.append(GROUP)
            return GROUP
        if entity == "transactionalId":
            exp.txns.append(TXN)
            return TXN
        if api_key == 10 and name in ("Key", "CoordinatorKeys"):
            exp.groups.append(GROUP)
            return GROUP
        if api_key in (32, 33, 44) and name == "ResourceName":
            exp.topics.append(TOPICS[index % 2])
            return TOPICS[index % 2]
        return "s"
    if typ == "uuid":
        if name == "TopicId":
            exp.topic_ids.append(TOPIC_ID.bytes)
        return TOPIC_ID
    if typ in ("bytes", "records"):
        return b"\x00" * 61  # stands for a record batch: skipped by length
    if typ == "bool":
        return False
    if typ == "float64":
        return 1.5
    if api_key in (32, 33, 44) and name == "ResourceType":
        return 2  # TOPIC
    if api_key == 10 and name == "KeyType":
        return 0  # group
    return 1


def _struct(api_key: int, st, version: int, exp: Expected, index: int):
    vals = {}
    for name, f in st.fields.items():
        if not f.for_version_q(version) or (f.tag is not None and f.tagged_field_q(version)):
            continue
        vals[name] = _value(api_key, f, version, exp, index)
    return st.data_class(version=version, **vals)


def sample_request(api_key: int, version: int, correlation_id: int = 42) -> tuple[bytes, Expected]:
    cls = message_class(api_key, "request")
    exp = Expected()
    vals = {}
    for name, f in cls._struct.fields.items():
        if not f.for_version_q(version) or (f.tag is not None and f.tagged_field_q(version)):
            continue
        vals[name] = _value(api_key, f, version, exp, 0)
    msg = cls[version](**vals)
    msg.with_header(correlation_id=correlation_id, client_id=CLIENT_ID)
    return bytes(msg.encode(header=True, framed=True)), exp


def all_versions():
    from l7parsers.kafka.schemas import all_schemas
    for key, schema in sorted(all_schemas().items()):
        if message_class(key, "request") is None:
            continue
        for v in range(schema.max_version + 1):
            yield key, v
