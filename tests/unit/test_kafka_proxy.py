"""The Kafka proxy against a scripted in-process broker: request order with local denials, acks=0,
topic-ID learning, fail-closed paths (malformed frames, timeouts, policy errors, unbuildable denials)."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest
from kafka.protocol.metadata import MetadataResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from l7parsers.kafka import parse_request
from l7parsers.kafka.policy import TopicNames, decide
from l7parsers.kafkaproxy import KafkaProxy, KafkaRecord, Verdict
from mesh.policy.kafka import KAFKA_ROLE_API_KEYS, api_key_number
from mesh.policy.l7 import L7Entry, L7Policy
from mesh.policy.model import KafkaRule

pytestmark = pytest.mark.timeout(30)

ALICE = 1001
TOPIC_ID = uuid.UUID("11111111-2222-3333-4444-555555555555")


def role(name: str, topic: str | None = None, **kw) -> KafkaRule:
    return KafkaRule(role=name, topic=topic, api_keys=KAFKA_ROLE_API_KEYS[name], **kw)


def api(name: str, topic: str | None = None, **kw) -> KafkaRule:
    return KafkaRule(api_key=name, topic=topic, api_keys=frozenset({api_key_number(name)}), **kw)


def policy(*rules: KafkaRule, identities=None) -> L7Policy:
    return L7Policy("kafka", (L7Entry(identities, None, tuple(rules), ("test-rule",)),))


def metadata(topics, correlation_id, version=12) -> bytes:
    from kafka.protocol.metadata import MetadataRequest
    T = MetadataRequest.MetadataRequestTopic
    msg = MetadataRequest[version](topics=[T(name=t, topic_id=uuid.UUID(int=0)) for t in topics],
                                   allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    msg.with_header(correlation_id=correlation_id, client_id="c")
    return bytes(msg.encode(header=True, framed=True))


def produce(topics, correlation_id, version=9, acks=1) -> bytes:
    P = ProduceRequest.TopicProduceData
    msg = ProduceRequest[version](transactional_id=None, acks=acks, timeout_ms=1000, topic_data=[
        P(name=t, partition_data=[P.PartitionProduceData(index=0, records=b"r" * 40)]) for t in topics])
    msg.with_header(correlation_id=correlation_id, client_id="producer-1")
    return bytes(msg.encode(header=True, framed=True))


class FakeBroker:
    """Answers every request with a minimal response of the right header version; Metadata with a real
    MetadataResponse naming TOPIC_ID. `hold` delays answering the request with that correlation id."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.raw = b""
        self.hold: dict[int, asyncio.Event] = {}
        self.server = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack(">i", head)[0])
                self.raw += head + body
                req = parse_request(head + body)
                self.received.append(req.correlation_id)
                if req.api_key == 0 and req.acks == 0:
                    continue
                if req.correlation_id in self.hold:
                    await self.hold[req.correlation_id].wait()
                writer.write(self._answer(req))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, req) -> bytes:
        if req.api_key == 3:
            T = MetadataResponse.MetadataResponseTopic
            msg = MetadataResponse[req.api_version](throttle_time_ms=0, brokers=[], cluster_id="c", controller_id=1,
                                                    topics=[T(error_code=0, name="orders", topic_id=TOPIC_ID,
                                                              is_internal=False, partitions=[])])
            msg.with_header(correlation_id=req.correlation_id)
            return bytes(msg.encode(header=True, framed=True))
        payload = struct.pack(">i", req.correlation_id) + (b"\x00" if req.header_version == 2 else b"") + b"OK"
        return struct.pack(">i", len(payload)) + payload


@pytest.fixture
async def rig():
    broker = FakeBroker()
    up = await broker.start()
    records: list[KafkaRecord] = []
    state = {"policy": policy(role("produce", "orders"), role("consume", "orders"))}

    def policy_for(src, dst, port):
        p = state["policy"]
        if isinstance(p, Exception):
            raise p
        return p
    proxy = KafkaProxy(policy_for=policy_for, identity_for=lambda ip: ALICE, on_record=records.append,
                       upstream=up, frame_timeout=0.5, max_frame_size=1 << 20)
    await proxy.start()
    try:
        yield broker, proxy, records, state
    finally:
        await proxy.close()
        await broker.close()


async def read_frame(reader) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(4), 5)
    return head + await asyncio.wait_for(reader.readexactly(struct.unpack(">i", head)[0]), 5)


async def eventually(cond, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_pipelined_responses_come_back_in_request_order_when_one_is_denied_locally(rig):
    broker, proxy, records, _ = rig
    broker.hold[1] = asyncio.Event()
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["orders"], 1) + produce(["secret"], 2) + produce(["orders"], 3))
    await writer.drain()
    # The proxy has decided all three (the denial of #2 is ready) while the broker still sits on #1.
    await eventually(lambda: proxy.counters.requests == 3 and broker.received == [1])
    broker.hold[1].set()
    frames = [await read_frame(reader) for _ in range(3)]
    assert broker.received == [1, 3]
    assert [struct.unpack_from(">i", f, 4)[0] for f in frames] == [1, 2, 3]
    denied = ProduceResponse.decode(frames[1], version=9, header=True, framed=True)
    assert denied.responses[0].name == "secret"
    assert denied.responses[0].partition_responses[0].error_code == 29
    writer.close()
    await eventually(lambda: len(records) == 3)
    assert [(r.correlation_id, r.verdict) for r in records] == [
        (1, Verdict.FORWARDED), (2, Verdict.DENIED), (3, Verdict.FORWARDED)]
    assert records[1].error_code == 29 and records[1].topics == ("secret",) and records[1].src_identity == ALICE
    assert records[0].latency_s is not None and records[0].client_id == "producer-1" and records[0].api == "Produce"


async def test_multi_topic_produce_with_one_denied_topic_is_denied_whole(rig):
    broker, proxy, records, _ = rig
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["orders", "secret"], 5))
    resp = ProduceResponse.decode(await read_frame(reader), version=9, header=True, framed=True)
    assert {t.name: t.partition_responses[0].error_code for t in resp.responses} == {"orders": 29, "secret": 29}
    assert broker.received == []
    writer.close()


async def test_denied_acks0_produce_gets_no_answer_and_the_next_request_still_does(rig):
    broker, proxy, records, _ = rig
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["secret"], 1, acks=0) + produce(["orders"], 2, acks=0) + produce(["orders"], 3))
    frame = await read_frame(reader)
    assert struct.unpack_from(">i", frame, 4)[0] == 3
    assert broker.received == [2, 3]
    await eventually(lambda: len(records) == 3)
    assert [r.verdict for r in records] == [Verdict.DENIED, Verdict.FORWARDED, Verdict.FORWARDED]
    writer.close()


async def test_fetch_by_topic_id_is_denied_until_metadata_taught_the_name(rig):
    broker, proxy, records, _ = rig
    from kafka.protocol.consumer import FetchRequest
    F = FetchRequest.FetchTopic

    def fetch(cid):
        msg = FetchRequest[13](replica_id=-1, max_wait_ms=10, min_bytes=1, max_bytes=1000, isolation_level=0,
                               session_id=0, session_epoch=-1, topics=[F(topic_id=TOPIC_ID, partitions=[
                                   F.FetchPartition(partition=0, current_leader_epoch=-1, fetch_offset=0,
                                                    last_fetched_epoch=-1, log_start_offset=-1,
                                                    partition_max_bytes=100)])],
                               forgotten_topics_data=[], rack_id="")
        msg.with_header(correlation_id=cid, client_id="c")
        return bytes(msg.encode(header=True, framed=True))
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(fetch(1))
    await read_frame(reader)
    assert broker.received == [] and "unresolved topic id" in records[-1].reason
    writer.write(metadata(["orders"], 2))  # the broker's answer names TOPIC_ID "orders"
    await read_frame(reader)
    writer.write(fetch(3))
    await read_frame(reader)
    assert broker.received == [2, 3]
    await eventually(lambda: len(records) == 3)
    assert records[-1].verdict == Verdict.FORWARDED and records[-1].topics == ("orders",)
    writer.close()


async def test_metadata_forwards_allowed_topics_and_answers_denied_ones_with_29(rig):
    broker, proxy, records, _ = rig
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(metadata(["orders", "secret"], 4))
    resp = MetadataResponse.decode(await read_frame(reader), version=12, header=True, framed=True)
    assert resp.header.correlation_id == 4
    assert {t.name: t.error_code for t in resp.topics} == {"orders": 0, "secret": 29}
    assert b"secret" not in broker.raw and b"orders" in broker.raw
    await eventually(lambda: len(records) == 1)
    assert records[0].verdict == Verdict.DENIED and "secret" in records[0].reason
    writer.close()


async def test_malformed_frame_closes_the_connection_with_an_error_record_and_reaches_nobody(rig):
    broker, proxy, records, _ = rig
    good = produce(["orders"], 1)
    bad = bytearray(good)
    i = bad.index(b"orders")
    bad[i:i + 2] = b"\xff\xfe"  # invalid UTF-8 in the topic name
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(bytes(bad))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert broker.raw == b""
    assert records[-1].verdict == Verdict.ERROR and "UTF-8" in records[-1].reason
    assert proxy.counters.rejected_frames == 1


async def test_oversized_and_negative_frames_are_rejected_and_counted(rig):
    broker, proxy, records, _ = rig
    for data in (struct.pack(">i", 1 << 30), struct.pack(">i", -1)):
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(data)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert proxy.counters.rejected_frames == 2 and broker.raw == b""


async def test_a_client_that_never_finishes_a_frame_is_timed_out(rig):
    broker, proxy, records, _ = rig
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["orders"], 1)[:20])
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert proxy.counters.timeouts == 1 and broker.raw == b""
    assert "unfinished frame" in records[-1].reason


async def test_an_idle_connection_is_closed_after_the_idle_timeout(rig):
    broker, _, _, _ = rig
    records = []
    proxy = KafkaProxy(policy_for=lambda s, d, p: None, identity_for=lambda ip: 1, on_record=records.append,
                       upstream=broker.server.sockets[0].getsockname()[:2], idle_timeout=0.3, frame_timeout=5)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(produce(["orders"], 1))
        await read_frame(reader)  # a finished exchange, then silence
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert proxy.counters.timeouts == 1 and "idle connection" in records[-1].reason
    finally:
        await proxy.close()


async def test_policy_callback_failure_fails_closed(rig):
    broker, proxy, records, state = rig
    state["policy"] = RuntimeError("policy store unavailable")
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["orders"], 1))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert broker.raw == b"" and records[-1].verdict == Verdict.ERROR
    assert proxy.counters.internal_errors == 1


async def test_no_kafka_policy_forwards_everything(rig):
    broker, proxy, records, state = rig
    state["policy"] = None
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(produce(["secret"], 1))
    await read_frame(reader)
    assert broker.received == [1]
    writer.close()


async def test_unknown_version_passes_only_a_rule_without_topics(rig):
    broker, proxy, records, state = rig
    future = bytearray(produce(["orders"], 1, version=9))
    struct.pack_into(">h", future, 6, 99)  # Produce v99: body unreadable
    state["policy"] = policy(api("produce"))
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(bytes(future))
    await read_frame(reader)
    assert broker.received == [1]
    writer.close()
    state["policy"] = policy(role("produce", "orders"))  # topic-restricted: the body cannot be checked
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(bytes(future))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # no v99 denial can be encoded: closed
    assert broker.received == [1] and records[-1].verdict == Verdict.DENIED


def test_policy_adapter_metadata_is_authorized_per_topic():
    req = parse_request(metadata(["orders", "payments"], 1))
    d = decide(policy(role("produce", "orders")), ALICE, req, TopicNames())
    assert d.allowed and d.denied_topics == ("payments",)
    d = decide(policy(role("produce", "nothing-matches")), ALICE, req, TopicNames())
    assert d.allowed and set(d.denied_topics) == {"orders", "payments"}  # brokers still come back
    d = decide(policy(api("fetch")), ALICE, req, TopicNames())
    assert not d.allowed


def test_policy_adapter_client_id_version_and_identity():
    req = parse_request(produce(["orders"], 1))
    assert decide(policy(role("produce", "orders", client_id="producer-1")), ALICE, req, TopicNames()).allowed
    assert not decide(policy(role("produce", "orders", client_id="other")), ALICE, req, TopicNames()).allowed
    assert decide(policy(api("produce", api_version=9)), ALICE, req, TopicNames()).allowed
    assert not decide(policy(api("produce", api_version=8)), ALICE, req, TopicNames()).allowed
    assert not decide(policy(role("produce"), identities=frozenset({7})), ALICE, req, TopicNames()).allowed


def test_topic_names_forget_an_id_seen_with_two_names():
    names = TopicNames()
    names.learn(((TOPIC_ID.bytes, "orders"),))
    assert names.name(TOPIC_ID.bytes) == "orders"
    names.learn(((TOPIC_ID.bytes, "secret"),))
    assert names.name(TOPIC_ID.bytes) is None
    names.learn(((TOPIC_ID.bytes, "orders"),))
    assert names.name(TOPIC_ID.bytes) is None


async def test_metadata_for_every_topic_shows_only_the_topics_the_peer_may_use(rig):
    broker, proxy, records, state = rig
    from kafka.protocol.metadata import MetadataRequest
    msg = MetadataRequest[12](topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    msg.with_header(correlation_id=8, client_id="c")
    all_topics = bytes(msg.encode(header=True, framed=True))
    reader, writer = await asyncio.open_connection(*proxy.address)
    state["policy"] = policy(role("produce", "payments"))  # the fake broker's only topic is "orders"
    writer.write(all_topics)
    resp = MetadataResponse.decode(await read_frame(reader), version=12, header=True, framed=True)
    assert resp.header.correlation_id == 8 and resp.topics == []
    state["policy"] = policy(role("produce", "orders"))
    writer.write(all_topics)
    resp = MetadataResponse.decode(await read_frame(reader), version=12, header=True, framed=True)
    assert [t.name for t in resp.topics] == ["orders"]
    writer.close()
