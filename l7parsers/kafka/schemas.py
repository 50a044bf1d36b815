"""Kafka's message definitions (the JSON schemas kafka-python ships), loaded without importing kafka-python.

The lean reader (`_readers.py`) compiles these into per-(API, version) readers, so field layouts come
from Kafka itself rather than from hand-written tables. Loading reads the files straight from the
installed kafka-python distribution: importing the `kafka` package itself costs ~0.2 s (it pulls in
the whole client), which `ostium kafka decode` and the proxy's start-up do not need to pay.

A few APIs current clients send are missing from kafka-python 3.0.12 (ConsumerGroupHeartbeat from the
KIP-848 consumer protocol, KIP-714 client telemetry); their layouts are in `extra_schemas/`, in Kafka's
JSON format, written from Kafka's protocol guide.
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


EXTRA_PACKAGE = "l7parsers.kafka.extra_schemas"
_EXTRA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extra_schemas")


def extra_names() -> list[str]:
    """Message names defined in extra_schemas/ (APIs kafka-python does not ship)."""
    return sorted(f[:-5] for f in os.listdir(_EXTRA_DIR) if f.endswith(".json"))


def _load(name: str) -> dict[str, Any] | None:
    data = _load_file(name)
    if data is None:
        path = os.path.join(_EXTRA_DIR, name + ".json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
    return data


@lru_cache(maxsize=1)
def all_schemas() -> dict[int, ApiSchema]:
    """API key → schema, for every request kafka-python ships plus those in extra_schemas/."""
    out: dict[int, ApiSchema] = {}
    names = [f[:-len("Request.json")] for f in os.listdir(_resource_dir()) if f.endswith("Request.json")]
    names += [n[:-len("Request")] for n in extra_names() if n.endswith("Request")]
    for base in sorted(set(names)):
        req = _load(base + "Request")
        resp = _load(base + "Response")
        if req is None or "apiKey" not in req:
            continue
        valid = parse_versions(req["validVersions"])
        assert valid is not None
        out[req["apiKey"]] = ApiSchema(req["apiKey"], base, req, resp, valid[1],
                                       parse_versions(req.get("flexibleVersions")))
    return out


def schema_for(api_key: int) -> ApiSchema | None:
    return all_schemas().get(api_key)
