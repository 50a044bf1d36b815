"""The Kafka proxy between real clients (kafka-python, aiokafka, confluent-kafka) and a real
Kafka-protocol broker (Tansu): what an allowed or denied client sees in its own API.

Explicit mode: Tansu advertises the proxy's address, so every connection the clients open after
bootstrapping (metadata, partition leaders, group coordinator) goes through the proxy too.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import uuid

import pytest

from l7parsers.kafkaproxy import KafkaProxy, KafkaRecord, Verdict
from mesh.policy.kafka import KAFKA_ROLE_API_KEYS, api_key_number
from mesh.policy.l7 import L7Entry, L7Policy
from mesh.policy.model import KafkaRule

try:
    from tests.kafka_fixture import free_port, tansu_broker
except ModuleNotFoundError:
    from kafka_fixture import free_port, tansu_broker

pytestmark = pytest.mark.timeout(60)

FAST_GROUP = dict(session_timeout_ms=3000, heartbeat_interval_ms=500, max_poll_interval_ms=3000)


def role(name, topic=None, **kw):
    return KafkaRule(role=name, topic=topic, api_keys=KAFKA_ROLE_API_KEYS[name], **kw)


def api(name, topic=None, **kw):
    return KafkaRule(api_key=name, topic=topic, api_keys=frozenset({api_key_number(name)}), **kw)


def policy(*rules):
    return L7Policy("kafka", (L7Entry(None, None, tuple(rules), ("e2e",)),))


class Rig:
    def __init__(self, proxy: KafkaProxy, loop: asyncio.AbstractEventLoop, state: dict, records: list) -> None:
        self.proxy = proxy
        self.loop = loop
        self.state = state
        self.records = records

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.address[1]}"

    def set_policy(self, p: L7Policy | None) -> None:
        self.state["policy"] = p
        self.records.clear()

    def denied(self, api_name: str) -> list[KafkaRecord]:
        return [r for r in list(self.records) if r.verdict == Verdict.DENIED and r.api == api_name]


@pytest.fixture(scope="module")
def rig():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state: dict = {"policy": None}
    records: list[KafkaRecord] = []
    proxy_port, broker_port = free_port(), free_port()
    proxy = KafkaProxy(policy_for=lambda s, d, p: state["policy"], identity_for=lambda ip: 1000,
                       on_record=records.append, listen=("127.0.0.1", proxy_port),
                       upstream=("127.0.0.1", broker_port), frame_timeout=5.0)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        with tansu_broker(port=broker_port, advertise=("127.0.0.1", proxy_port)):
            yield Rig(proxy, loop, state, records)
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert proxy.counters.internal_errors == 0


def kp_producer(rig, **kw):
    from kafka import KafkaProducer
    return KafkaProducer(bootstrap_servers=rig.bootstrap, acks=1, request_timeout_ms=3000, max_block_ms=4000,
                         retries=0, **kw)


# --- producers: allowed on one topic, denied on another, in each client's own API ----------------------

def test_kafka_python_producer_sees_topic_authorization_failed_on_the_denied_topic(rig):
    from kafka.errors import TopicAuthorizationFailedError
    rig.set_policy(policy(role("produce", "kp-orders")))
    producer = kp_producer(rig)
    try:
        assert producer.send("kp-orders", b"one").get(5).offset >= 0
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("kp-secret", b"two").get(5)
        # The allowed topic keeps working although the client now asks metadata for both.
        assert producer.send("kp-orders", b"three").get(5).offset >= 0
    finally:
        producer.close(timeout=2)
    denied = rig.denied("Metadata")
    assert denied and all("kp-secret" in r.reason for r in denied) and denied[0].error_code == 29
    assert any(r.verdict == Verdict.FORWARDED and r.api == "Produce" and r.topics == ("kp-orders",)
               for r in rig.records)


async def test_aiokafka_producer_sees_topic_authorization_failed(rig):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError
    rig.set_policy(policy(role("produce", "aio-orders")))
    producer = AIOKafkaProducer(bootstrap_servers=rig.bootstrap, request_timeout_ms=3000,
                                metadata_max_age_ms=60000)
    await producer.start()
    try:
        assert (await producer.send_and_wait("aio-orders", b"one")).offset >= 0
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(producer.send_and_wait("aio-secret", b"two"), 10)
    finally:
        await producer.stop()


def test_confluent_producer_delivery_report_carries_topic_authorization_failed(rig):
    from confluent_kafka import KafkaError, Producer
    rig.set_policy(policy(role("produce", "ck-orders")))
    results: dict[str, object] = {}
    producer = Producer({"bootstrap.servers": rig.bootstrap, "message.timeout.ms": 8000,
                         "socket.timeout.ms": 3000, "topic.metadata.refresh.interval.ms": 1000})
    producer.produce("ck-orders", b"one", callback=lambda err, msg: results.__setitem__("ok", err))
    producer.produce("ck-secret", b"two", callback=lambda err, msg: results.__setitem__("denied", err))
    assert producer.flush(12) == 0
    assert results["ok"] is None
    assert results["denied"] is not None and results["denied"].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


# --- the consume role and group coordination ---------------------------------------------------------

def _seed(rig, topic: str, n: int = 3) -> None:
    rig.set_policy(policy(role("produce", topic)))
    producer = kp_producer(rig)
    try:
        for i in range(n):
            producer.send(topic, f"m{i}".encode()).get(5)
    finally:
        producer.close(timeout=2)


def test_consume_role_lets_a_kafka_python_group_consumer_read_and_commit_but_not_produce(rig):
    from kafka import KafkaConsumer
    from kafka.errors import TopicAuthorizationFailedError
    _seed(rig, "kp-feed")
    rig.set_policy(policy(role("consume", "kp-feed")))
    consumer = KafkaConsumer("kp-feed", bootstrap_servers=rig.bootstrap, group_id="kp-group",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=10000,
                             request_timeout_ms=5000, **FAST_GROUP)
    try:
        got = []
        for msg in consumer:
            got.append(msg.value)
            if len(got) == 3:
                break
        assert sorted(got) == [b"m0", b"m1", b"m2"]
        consumer.commit()
    finally:
        consumer.close()
    apis_seen = {r.api for r in rig.records if r.verdict == Verdict.FORWARDED}
    assert {"FindCoordinator", "JoinGroup", "SyncGroup", "Fetch", "OffsetCommit"} <= apis_seen
    assert not [r for r in rig.records if r.verdict == Verdict.DENIED]
    producer = kp_producer(rig)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("kp-feed", b"nope").get(5)
    finally:
        producer.close(timeout=2)


async def test_consume_role_with_aiokafka_group_consumer(rig):
    from aiokafka import AIOKafkaConsumer
    _seed(rig, "aio-feed")
    rig.set_policy(policy(role("consume", "aio-feed")))
    consumer = AIOKafkaConsumer("aio-feed", bootstrap_servers=rig.bootstrap, group_id="aio-group",
                                auto_offset_reset="earliest", request_timeout_ms=5000, **FAST_GROUP)
    await consumer.start()
    try:
        got = []
        while len(got) < 3:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 15)
            got += [m.value for msgs in batch.values() for m in msgs]
        assert sorted(got) == [b"m0", b"m1", b"m2"]
    finally:
        await consumer.stop()
    assert not [r for r in rig.records if r.verdict == Verdict.DENIED]


def test_consume_role_with_confluent_consumer_and_a_denied_topic(rig):
    from confluent_kafka import Consumer, KafkaError
    _seed(rig, "ck-feed")
    rig.set_policy(policy(role("consume", "ck-feed")))
    consumer = Consumer({"bootstrap.servers": rig.bootstrap, "group.id": "ck-group",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 3000,
                         "max.poll.interval.ms": 3000, "heartbeat.interval.ms": 500,
                         "topic.metadata.refresh.interval.ms": 1000})
    try:
        consumer.subscribe(["ck-feed", "ck-secret"])
        got, errors = [], []
        deadline = time.monotonic() + 20
        while (len(got) < 3 or not errors) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                errors.append(msg.error().code())
            else:
                got.append(msg.value())
        assert sorted(got) == [b"m0", b"m1", b"m2"]
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in errors
    finally:
        consumer.close()


# --- clientID and apiVersion rules -------------------------------------------------------------------

BOOTSTRAP_RULES = (api("apiversions"), api("metadata"))


def test_client_id_rule_allows_one_client_and_denies_another(rig):
    from kafka.errors import TopicAuthorizationFailedError
    rig.set_policy(policy(role("produce", "cid-orders", client_id="billing-svc"), *BOOTSTRAP_RULES))
    good = kp_producer(rig, client_id="billing-svc")
    bad = kp_producer(rig, client_id="intruder")
    try:
        assert good.send("cid-orders", b"ok").get(5).offset >= 0
        with pytest.raises(TopicAuthorizationFailedError):
            bad.send("cid-orders", b"no").get(5)
    finally:
        good.close(timeout=2)
        bad.close(timeout=2)
    denied = rig.denied("Produce")
    assert denied and {r.client_id for r in denied} == {"intruder"}


def test_api_version_rule(rig):
    from kafka.errors import TopicAuthorizationFailedError
    rig.set_policy(None)
    producer = kp_producer(rig)
    try:
        producer.send("ver-orders", b"probe").get(5)
    finally:
        producer.close(timeout=2)
    version = next(r.api_version for r in rig.records if r.api == "Produce")
    rig.set_policy(policy(api("produce", "ver-orders", api_version=version), *BOOTSTRAP_RULES))
    producer = kp_producer(rig)
    try:
        assert producer.send("ver-orders", b"ok").get(5).offset >= 0
    finally:
        producer.close(timeout=2)
    rig.set_policy(policy(api("produce", "ver-orders", api_version=version - 1), *BOOTSTRAP_RULES))
    producer = kp_producer(rig)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("ver-orders", b"no").get(5)
    finally:
        producer.close(timeout=2)


# --- a multi-topic request with one denied topic ------------------------------------------------------

def _roundtrip(rig, frame: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", rig.proxy.address[1]), timeout=5) as s:
        s.sendall(frame)
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        size = struct.unpack(">i", head)[0]
        body = b""
        while len(body) < size:
            body += s.recv(size - len(body))
        return head + body


def test_multi_topic_produce_with_one_denied_topic_is_denied_for_every_topic(rig):
    from kafka.protocol.producer import ProduceRequest, ProduceResponse
    from kafka.record.memory_records import MemoryRecordsBuilder
    rig.set_policy(policy(role("produce", "mt-orders")))

    def batch() -> bytes:
        b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 16)
        b.append(timestamp=None, key=None, value=b"v", headers=[])
        b.close()
        return bytes(b.buffer())
    P = ProduceRequest.TopicProduceData

    def request(topics, cid):
        msg = ProduceRequest[9](transactional_id=None, acks=1, timeout_ms=3000, topic_data=[
            P(name=t, partition_data=[P.PartitionProduceData(index=0, records=batch())]) for t in topics])
        msg.with_header(correlation_id=cid, client_id="raw")
        return bytes(msg.encode(header=True, framed=True))
    both = ProduceResponse.decode(_roundtrip(rig, request(["mt-orders", "mt-secret"], 1)), version=9,
                                  header=True, framed=True)
    assert {t.name: t.partition_responses[0].error_code for t in both.responses} == {"mt-orders": 29,
                                                                                      "mt-secret": 29}
    # Metadata first so the topic exists, then the allowed topic alone passes to the broker.
    from kafka.protocol.metadata import MetadataRequest
    md = MetadataRequest[12](topics=[MetadataRequest.MetadataRequestTopic(name="mt-orders", topic_id=uuid.UUID(int=0))],
                             allow_auto_topic_creation=True, include_topic_authorized_operations=False)
    md.with_header(correlation_id=2, client_id="raw")
    _roundtrip(rig, bytes(md.encode(header=True, framed=True)))
    alone = ProduceResponse.decode(_roundtrip(rig, request(["mt-orders"], 3)), version=9, header=True, framed=True)
    assert alone.responses[0].partition_responses[0].error_code == 0


# --- the API's own authorization error where it names no topic -----------------------------------------

def test_idempotent_producer_works_under_the_produce_role(rig):
    """An idempotent producer's InitProducerId (null transactional id) is part of `produce`."""
    from kafka import KafkaProducer
    rig.set_policy(policy(role("produce", "idem-orders")))
    producer = KafkaProducer(bootstrap_servers=rig.bootstrap, enable_idempotence=True, acks="all",
                             request_timeout_ms=3000, max_block_ms=4000)
    try:
        assert producer.send("idem-orders", b"once").get(5).offset >= 0
    finally:
        producer.close(timeout=2)
    assert any(r.api == "InitProducerId" and r.verdict == Verdict.FORWARDED for r in rig.records)


def test_transactional_producer_gets_transactional_id_authorization_failed(rig):
    from kafka import KafkaProducer
    from kafka.errors import TransactionalIdAuthorizationFailedError
    rig.set_policy(policy(role("produce", "tx-orders")))
    producer = KafkaProducer(bootstrap_servers=rig.bootstrap, transactional_id="tx-billing",
                             request_timeout_ms=3000, max_block_ms=4000)
    try:
        with pytest.raises(TransactionalIdAuthorizationFailedError):
            producer.init_transactions()
    finally:
        producer.close(timeout=1)
    assert any(r.verdict == Verdict.DENIED and r.error_code == 53 for r in rig.records)


def test_consumer_group_without_the_consume_role_gets_group_authorization_failed(rig):
    from kafka import KafkaConsumer
    from kafka.errors import GroupAuthorizationFailedError
    rig.set_policy(policy(role("produce", "grp-orders")))
    consumer = KafkaConsumer("grp-orders", bootstrap_servers=rig.bootstrap, group_id="grp-intruders",
                             request_timeout_ms=3000, **FAST_GROUP)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()
    assert any(r.verdict == Verdict.DENIED and r.error_code == 30 for r in rig.records)
