"""The sans-IO Kafka parser: every API and version (frames encoded by kafka-python from Kafka's own
schemas), partial and pipelined input, flexible headers, and bad input turned into ProtocolError."""

from __future__ import annotations

import struct

import pytest

try:  # `python -m pytest` from the repo root has it on sys.path; the `pytest` script only has tests/
    from tests.kafka_fixture import CLIENT_ID, TOPIC_ID, all_versions, sample_request
except ModuleNotFoundError:
    from kafka_fixture import CLIENT_ID, TOPIC_ID, all_versions, sample_request

from l7parsers.kafka import (
    NEED_DATA, ConnectionClosed, FrameError, ProtocolError, Request, RequestParser, Response, ResponseParser,
    parse_request,
)
from l7parsers.kafka.responses import denied_response, message_class
from l7parsers.kafka.schemas import schema_for

VERSIONS = list(all_versions())


def _ids(kv):
    return f"{schema_for(kv[0]).name}-v{kv[1]}"


@pytest.mark.parametrize("key_version", VERSIONS, ids=[_ids(kv) for kv in VERSIONS])
def test_every_api_version_yields_its_topics_groups_and_client_id(key_version):
    api_key, version = key_version
    frame, exp = sample_request(api_key, version)
    req = parse_request(frame)
    assert (req.api_key, req.api_version, req.correlation_id) == (api_key, version, 42)
    assert req.parsed and req.client_id == CLIENT_ID
    assert req.header_version == (2 if schema_for(api_key).is_flexible(version) else 1)
    assert set(req.topics) == set(exp.topics)
    assert set(req.topic_ids) == set(exp.topic_ids)
    assert set(req.groups) == set(exp.groups)
    assert set(req.transactional_ids) == set(exp.txns)
    # The body the proxy would forward is the body kafka-python encoded, byte for byte.
    assert req.frame == frame


def _walk_errors(obj, out, names):
    """Collect every *error_code value and every topic name/key in a decoded response."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.endswith("error_code"):
                out.append(v)
            elif k in ("name", "topic", "resource_name") and isinstance(v, str):
                names.add(v)
            else:
                _walk_errors(v, out, names)
    elif isinstance(obj, list):
        for v in obj:
            _walk_errors(v, out, names)


_TOPIC_RESULT_APIS = {0, 1, 2, 3, 8, 19, 20, 21, 23, 24, 27, 28, 32, 33, 37, 43, 44, 45, 47, 61, 75}


@pytest.mark.parametrize("key_version", VERSIONS, ids=[_ids(kv) for kv in VERSIONS])
def test_denied_response_is_well_formed_for_every_api_version(key_version):
    api_key, version = key_version
    frame, exp = sample_request(api_key, version, correlation_id=7001)
    req = parse_request(frame)
    denial = denied_response(req)
    assert denial is not None
    (size,) = struct.unpack_from(">i", denial)
    assert size == len(denial) - 4
    resp_version = 0 if api_key == 18 else version
    resp = message_class(api_key, "response").decode(denial, version=resp_version, header=True, framed=True)
    assert resp.header.correlation_id == 7001
    codes: list[int] = []
    names: set[str] = set()
    _walk_errors(resp.to_dict(), codes, names)
    assert codes, "a denial must carry an error code"
    assert set(codes) <= {0, 29, 30, 31, 53}
    assert any(c in (29, 30, 31, 53) for c in codes)
    if api_key in _TOPIC_RESULT_APIS and exp.topics:
        assert 29 in codes
        assert set(exp.topics) <= names, "every topic the request named comes back denied"


def test_denied_response_header_is_flexible_exactly_when_the_version_is():
    for version, header_len in ((8, 4), (9, 5)):  # v9+ Produce: response header v1 adds tagged fields
        req = parse_request(sample_request(0, version)[0])
        denial = denied_response(req)
        assert struct.unpack_from(">i", denial, 4)[0] == 42
        if header_len == 5:
            assert denial[8] == 0  # empty tagged-field section
    # ApiVersions answers with header v0 even for flexible versions (clients read it before negotiating).
    denial = denied_response(parse_request(sample_request(18, 3)[0]))
    assert struct.unpack_from(">ih", denial, 4) == (42, 31)


def test_produce_acks_and_response_expectation():
    frame, _ = sample_request(0, 9)
    req = parse_request(frame)
    assert req.acks == 1 and req.expects_response
    from kafka.protocol.producer import ProduceRequest
    msg = ProduceRequest[9](transactional_id=None, acks=0, timeout_ms=100, topic_data=[])
    msg.with_header(correlation_id=1, client_id="c")
    req0 = parse_request(bytes(msg.encode(header=True, framed=True)))
    assert req0.acks == 0 and not req0.expects_response


def test_fetch_v13_names_topics_by_id_and_v12_by_name():
    assert parse_request(sample_request(1, 12)[0]).topics == ("orders", "payments")
    req = parse_request(sample_request(1, 13)[0])
    assert req.topics == () and req.topic_ids == (TOPIC_ID.bytes,)


def test_offset_fetch_v8_batches_groups_and_their_topics():
    req = parse_request(sample_request(9, 8)[0])
    assert req.groups == ("billing",) and req.topics == ("orders", "payments")


def test_add_partitions_to_txn_v4_batches_transactions():
    req = parse_request(sample_request(24, 4)[0])
    assert req.transactional_ids == ("txn-7",) and set(req.topics) == {"orders", "payments"}


def test_find_coordinator_transaction_key_is_a_transactional_id():
    from kafka.protocol.metadata import FindCoordinatorRequest
    for version, kw in ((3, {"key": "tx-a", "key_type": 1}), (4, {"key_type": 1, "coordinator_keys": ["tx-a", "tx-b"]})):
        msg = FindCoordinatorRequest[version](**kw)
        msg.with_header(correlation_id=1, client_id="c")
        req = parse_request(bytes(msg.encode(header=True, framed=True)))
        assert req.transactional_ids[0] == "tx-a" and req.groups == ()


def test_describe_configs_broker_resources_are_not_topics():
    from kafka.protocol.admin import DescribeConfigsRequest
    R = DescribeConfigsRequest.DescribeConfigsResource
    msg = DescribeConfigsRequest[4](resources=[R(resource_type=4, resource_name="1", configuration_keys=None),
                                               R(resource_type=2, resource_name="orders", configuration_keys=None)],
                                    include_synonyms=False, include_documentation=False)
    msg.with_header(correlation_id=1, client_id="c")
    assert parse_request(bytes(msg.encode(header=True, framed=True))).topics == ("orders",)


def _consumer_group_heartbeat(topics: list[str]) -> bytes:
    """ConsumerGroupHeartbeat v0 (KIP-848) by hand: kafka-python 3.0.12 has no class for it."""
    def cstr(s):
        return b"\x00" if s is None else bytes([len(s.encode()) + 1]) + s.encode()
    body = (cstr("billing") + cstr("member-1") + struct.pack(">i", 0) + cstr(None) + cstr(None)
            + struct.pack(">i", 30000) + bytes([len(topics) + 1]) + b"".join(cstr(t) for t in topics)
            + cstr(None) + b"\x00" + b"\x00")
    header = struct.pack(">hhi", 68, 0, 5) + struct.pack(">h", 1) + b"c" + b"\x00"
    return struct.pack(">i", len(header) + len(body)) + header + body


def test_consumer_group_heartbeat_by_hand():
    req = parse_request(_consumer_group_heartbeat(["orders"]))
    assert req.parsed and req.header_version == 2
    assert req.groups == ("billing",) and req.topics == ("orders",)


def test_request_header_v2_tagged_fields_are_skipped():
    frame, _ = sample_request(3, 12)
    # Insert one tagged field (tag 5, 3 bytes) into the header's empty tagged section.
    client_end = 12 + 2 + len(CLIENT_ID.encode())
    assert frame[client_end] == 0
    payload = frame[4:client_end] + b"\x01\x05\x03abc" + frame[client_end + 1:]
    req = parse_request(struct.pack(">i", len(payload)) + payload)
    assert req.topics == ("orders", "payments") and req.client_id == CLIENT_ID


def test_unknown_api_key_and_version_keep_header_and_opaque_body():
    header = struct.pack(">hhih", 1000, 3, 77, 2) + b"cx" + b"opaque body"
    req = parse_request(struct.pack(">i", len(header)) + header)
    assert (req.api_key, req.api_version, req.correlation_id, req.client_id, req.parsed) == (1000, 3, 77, "cx", False)
    frame, _ = sample_request(0, 13)
    payload = bytearray(frame[4:])
    struct.pack_into(">h", payload, 2, 99)  # Produce v99: a future version
    req = parse_request(struct.pack(">i", len(payload)) + bytes(payload))
    assert req.api_version == 99 and not req.parsed and req.topics == () and req.header_version == 2


def _events(parser):
    out = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, (ProtocolError, ConnectionClosed)):
            return out


def test_byte_by_byte_feeding_gives_the_same_requests():
    frames = [sample_request(k, v, correlation_id=i)[0] for i, (k, v) in enumerate([(0, 9), (1, 17), (3, 12), (11, 9)])]
    parser = RequestParser()
    seen = []
    for b in b"".join(frames):
        parser.receive_data(bytes([b]))
        seen += _events(parser)
    assert [e.correlation_id for e in seen] == [0, 1, 2, 3]
    assert all(isinstance(e, Request) for e in seen)
    assert not parser.partial_frame


def test_pipelined_frames_in_one_chunk_come_out_in_order():
    data = b"".join(sample_request(0, 9, correlation_id=i)[0] for i in range(50))
    parser = RequestParser()
    parser.receive_data(data[:1000])
    parser.receive_data(data[1000:])
    assert [e.correlation_id for e in _events(parser)] == list(range(50))


def test_eof_between_frames_is_a_clean_close_and_mid_frame_is_an_error():
    frame, _ = sample_request(3, 12)
    p = RequestParser()
    p.receive_data(frame)
    p.receive_data(b"")
    assert isinstance(_events(p)[-1], ConnectionClosed)
    p = RequestParser()
    p.receive_data(frame[:-3])
    assert p.partial_frame
    p.receive_data(b"")
    assert isinstance(_events(p)[-1], ProtocolError)


@pytest.mark.parametrize("data, reason", [
    (struct.pack(">i", -5), "negative frame size"),
    (struct.pack(">i", 2000), "exceeds the limit"),
    (struct.pack(">i", 3) + b"abc", "shorter than a header"),
])
def test_bad_sizes_are_rejected_before_any_body_arrives(data, reason):
    p = RequestParser(max_frame_size=1000)
    p.receive_data(data)
    ev = p.next_event()
    assert isinstance(ev, ProtocolError) and reason in ev.reason
    assert p.next_event() is ev  # sticky: the connection cannot continue


def _corrupt(frame: bytes, find: bytes, replace: bytes) -> bytes:
    i = frame.index(find)
    payload = frame[4:i] + replace + frame[i + len(find):]
    return struct.pack(">i", len(payload)) + payload


def test_invalid_utf8_in_a_topic_name_is_a_protocol_error():
    frame, _ = sample_request(0, 8)  # non-flexible: INT16 lengths
    bad = _corrupt(frame, b"orders", b"ord\xff\xfes")
    p = RequestParser()
    p.receive_data(bad)
    ev = p.next_event()
    assert isinstance(ev, ProtocolError) and "UTF-8" in ev.reason and ev.correlation_id == 42


def test_truncated_and_absurd_arrays_are_protocol_errors():
    frame, _ = sample_request(0, 8)
    for payload in (frame[4:-10], frame[4:] + b"xx"):
        with pytest.raises(FrameError):
            parse_request(struct.pack(">i", len(payload)) + payload)
    # TopicData count (after transactional id, acks, timeout) set to 2**31-1.
    req = parse_request(frame)
    pos = req.body_offset + 2 + len("txn-7") + 2 + 4
    payload = bytearray(frame[4:])
    struct.pack_into(">i", payload, pos - 4, 0x7FFFFFFF)
    with pytest.raises(FrameError, match="more than the frame holds"):
        parse_request(struct.pack(">i", len(payload)) + bytes(payload))


def test_response_parser_matches_correlation_ids_and_learns_topic_ids():
    from kafka.protocol.metadata import MetadataResponse
    T = MetadataResponse.MetadataResponseTopic
    msg = MetadataResponse[12](throttle_time_ms=0, brokers=[], cluster_id="c", controller_id=1, topics=[
        T(error_code=0, name="orders", topic_id=TOPIC_ID, is_internal=False, partitions=[])])
    msg.with_header(correlation_id=9)
    frame = bytes(msg.encode(header=True, framed=True))
    p = ResponseParser()
    p.expect(9, 3, 12)
    p.receive_data(frame)
    ev = p.next_event()
    assert isinstance(ev, Response) and ev.topic_names_by_id == ((TOPIC_ID.bytes, "orders"),)
    p.receive_data(frame)  # a response nobody asked for
    assert isinstance(p.next_event(), ProtocolError)
    p = ResponseParser()
    p.expect(10, 3, 12)
    p.receive_data(frame)
    ev = p.next_event()
    assert isinstance(ev, ProtocolError) and "expected 10" in ev.reason


def test_metadata_for_every_topic_is_flagged():
    from kafka.protocol.metadata import MetadataRequest
    for version, topics, every in ((0, [], True), (1, None, True), (4, [], False), (12, None, True)):
        msg = MetadataRequest[version](topics=topics, allow_auto_topic_creation=False)
        msg.with_header(correlation_id=1, client_id="c")
        assert parse_request(bytes(msg.encode(header=True, framed=True))).all_topics is every
