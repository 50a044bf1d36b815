"""Kafka's message definitions (the JSON schemas kafka-python ships), loaded without importing kafka-python.

The lean reader (`_readers.py`) compiles these into per-(API, version) readers, so field layouts come
from Kafka itself rather than from hand-written tables. Loading reads the files straight from the
installed kafka-python distribution: importing the `kafka` package itself costs ~0.2 s (it pulls in
the whole client), which `ostium kafka decode` and the proxy's start-up do not need to pay.

A few APIs current clients may send are missing from kafka-python 3.0.12 (ConsumerGroupHeartbeat, the
KIP-848 consumer protocol); their layouts are written out in `EXTRA_SCHEMAS` below, from Kafka's
protocol documentation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_COMMENTS = re.compile(r"(?m)^\s*//.*$")

MAX_VERSION = 32767


def parse_versions(spec: str | None) -> tuple[int, int] | None:
    """Kafka's version-range syntax: "3+", "0-7", "5", "none" (→ None: never)."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec.endswith("+"):
        return int(spec[:-1]), MAX_VERSION
    if "-" in spec:
        lo, hi = spec.split("-", 1)
        return int(lo), int(hi)
    return int(spec), int(spec)


def in_range(rng: tuple[int, int] | None, version: int) -> bool:
    return rng is not None and rng[0] <= version <= rng[1]


@lru_cache(maxsize=1)
def _resource_dir() -> str:
    spec = importlib.util.find_spec("kafka")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("kafka-python is not installed: its message schemas are needed (pip install kafka-python)")
    return os.path.join(list(spec.submodule_search_locations)[0], "protocol", "schemas", "resources")


def _resolve_common(fields: list[dict], common: dict[str, list[dict]]) -> None:
    for f in fields:
        t = f["type"]
        inner = t[2:] if t.startswith("[]") else t
        if inner and inner[0].isupper() and "fields" not in f and inner in common:
            f["fields"] = common[inner]
        if "fields" in f:
            _resolve_common(f["fields"], common)


def _load_file(name: str) -> dict[str, Any] | None:
    path = os.path.join(_resource_dir(), name + ".json")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    data = json.loads(_COMMENTS.sub("", text))
    common = {s["name"]: s["fields"] for s in data.get("commonStructs", [])}
    if common:
        _resolve_common(data.get("fields", []), common)
    return data


@dataclass(frozen=True, slots=True)
class ApiSchema:
    api_key: int
    name: str  # Kafka's name without the Request/Response suffix, e.g. "Produce"
    request: dict[str, Any]
    response: dict[str, Any] | None
    max_version: int
    flexible: tuple[int, int] | None  # request/response flexible versions

    def is_flexible(self, version: int) -> bool:
        return in_range(self.flexible, version)


def _s(name: str, typ: str, versions: str = "0+", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": typ, "versions": versions, **kw}


# KIP-848 consumer group heartbeat (API key 68), versions 0-1, all flexible. Written from Kafka's
# protocol guide; kafka-python 3.0.12 does not ship it.
_TOPIC_PARTITIONS = [_s("TopicId", "uuid"), _s("Partitions", "[]int32")]
EXTRA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ConsumerGroupHeartbeatRequest": {
        "apiKey": 68, "type": "request", "name": "ConsumerGroupHeartbeatRequest",
        "validVersions": "0-1", "flexibleVersions": "0+",
        "fields": [
            _s("GroupId", "string", entityType="groupId"),
            _s("MemberId", "string"),
            _s("MemberEpoch", "int32"),
            _s("InstanceId", "string", nullableVersions="0+", default="null"),
            _s("RackId", "string", nullableVersions="0+", default="null"),
            _s("RebalanceTimeoutMs", "int32", default="-1"),
            _s("SubscribedTopicNames", "[]string", nullableVersions="0+", default="null", entityType="topicName"),
            _s("SubscribedTopicRegex", "string", "1+", nullableVersions="1+", default="null"),
            _s("ServerAssignor", "string", nullableVersions="0+", default="null"),
            _s("TopicPartitions", "[]TopicPartitions", nullableVersions="0+", default="null",
               fields=_TOPIC_PARTITIONS),
        ],
    },
    "ConsumerGroupHeartbeatResponse": {
        "apiKey": 68, "type": "response", "name": "ConsumerGroupHeartbeatResponse",
        "validVersions": "0-1", "flexibleVersions": "0+",
        "fields": [
            _s("ThrottleTimeMs", "int32"),
            _s("ErrorCode", "int16"),
            _s("ErrorMessage", "string", nullableVersions="0+", default="null"),
            _s("MemberId", "string", nullableVersions="0+", default="null"),
            _s("MemberEpoch", "int32"),
            _s("HeartbeatIntervalMs", "int32"),
            _s("Assignment", "Assignment", nullableVersions="0+", default="null",
               fields=[_s("TopicPartitions", "[]TopicPartitions", fields=_TOPIC_PARTITIONS)]),
        ],
    },
}


@lru_cache(maxsize=1)
def all_schemas() -> dict[int, ApiSchema]:
    """API key → schema, for every request kafka-python ships plus EXTRA_SCHEMAS."""
    out: dict[int, ApiSchema] = {}
    names = [f[:-len("Request.json")] for f in os.listdir(_resource_dir()) if f.endswith("Request.json")]
    names += [n[:-len("Request")] for n in EXTRA_SCHEMAS if n.endswith("Request")]
    for base in sorted(set(names)):
        req = EXTRA_SCHEMAS.get(base + "Request") or _load_file(base + "Request")
        resp = EXTRA_SCHEMAS.get(base + "Response") or _load_file(base + "Response")
        if req is None or "apiKey" not in req:
            continue
        valid = parse_versions(req["validVersions"])
        assert valid is not None
        out[req["apiKey"]] = ApiSchema(req["apiKey"], base, req, resp, valid[1],
                                       parse_versions(req.get("flexibleVersions")))
    return out


def schema_for(api_key: int) -> ApiSchema | None:
    return all_schemas().get(api_key)
