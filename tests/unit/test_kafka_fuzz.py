"""Fuzzing the Kafka parser (hypothesis): no exception escapes, bad frames become ProtocolError, and the
proxy closes a connection that sent one with an ERROR record, forwarding nothing."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from l7parsers.kafka import (
    NEED_DATA, ConnectionClosed, FrameError, ProtocolError, Request, RequestParser, Response, ResponseParser,
    parse_request,
)
from l7parsers.kafkaproxy import KafkaProxy, Verdict

try:
    from tests.kafka_fixture import all_versions, sample_request
except ModuleNotFoundError:
    from kafka_fixture import all_versions, sample_request

SAMPLES = [sample_request(k, v)[0] for k, v in all_versions()]
EVENTS = (Request, Response, ProtocolError, ConnectionClosed)


def drain(parser) -> list:
    out = []
    for _ in range(10_000):
        ev = parser.next_event()
        if ev is NEED_DATA:
            return out
        assert isinstance(ev, EVENTS)
        out.append(ev)
        if isinstance(ev, (ProtocolError, ConnectionClosed)):
            return out
    raise AssertionError("parser did not settle")


@st.composite
def mutated_frame(draw):
    frame = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
        pos = draw(st.integers(4, max(4, len(frame) - 1)))
        if kind == "flip" and pos < len(frame):
            frame[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del frame[pos:]
        elif kind == "extend":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            frame[pos:pos + 4] = struct.pack(">i", draw(st.sampled_from([-2, -1, 0x7FFFFFFF, 1 << 20, 255])))
    # Keep the size prefix honest half of the time, so the body parser (not the splitter) sees the damage.
    if draw(st.booleans()):
        struct.pack_into(">i", frame, 0, len(frame) - 4)
    return bytes(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frame())
def test_mutated_frames_parse_or_raise_frame_error_only(frame):
    if len(frame) < 12:
        return
    try:
        req = parse_request(frame)
    except FrameError:
        return
    assert isinstance(req, Request) and req.frame == frame


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=20), st.booleans())
def test_random_bytes_in_random_chunks_never_raise(data, cuts, eof):
    for parser in (RequestParser(max_frame_size=4096), ResponseParser(max_frame_size=4096)):
        if isinstance(parser, ResponseParser):
            for i in range(5):
                parser.expect(i, 3, 12)
        pos = 0
        for n in cuts:
            parser.receive_data(data[pos:pos + n])
            pos += n
            drain(parser)
        parser.receive_data(data[pos:])
        drain(parser)
        if eof:
            parser.receive_data(b"")
            drain(parser)


@settings(max_examples=200, deadline=None)
@given(mutated_frame(), st.integers(1, 50))
def test_request_parser_on_mutated_streams_yields_requests_then_at_most_one_error(frame, chunk):
    stream = SAMPLES[0] + frame + SAMPLES[1]
    parser = RequestParser(max_frame_size=1 << 20)
    events = []
    for i in range(0, len(stream), chunk):
        parser.receive_data(stream[i:i + chunk])
        events += drain(parser)
        if events and isinstance(events[-1], ProtocolError):
            break
    assert all(isinstance(e, Request) for e in events[:-1])
    if isinstance(events[-1], ProtocolError):
        assert parser.next_event() is events[-1]


def _malformed_frames() -> list[bytes]:
    """Deterministic damaged frames that the parser rejects (found by mutating real ones)."""
    out = []
    for frame in SAMPLES[::7]:
        for cut in (13, len(frame) // 2, len(frame) - 1):
            payload = frame[4:cut]
            bad = struct.pack(">i", len(payload)) + payload
            try:
                parse_request(bad)
            except FrameError:
                out.append(bad)
    return out


MALFORMED = _malformed_frames()


@pytest.mark.timeout(60)
async def test_proxy_closes_every_malformed_connection_with_an_error_record_and_forwards_nothing():
    assert len(MALFORMED) > 20
    received = bytearray()

    async def broker(reader, writer):
        received.extend(await reader.read())
        writer.close()
    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    records = []
    proxy = KafkaProxy(policy_for=lambda s, d, p: None, identity_for=lambda ip: 1, on_record=records.append,
                       upstream=server.sockets[0].getsockname()[:2], frame_timeout=5)
    await proxy.start()
    try:
        for bad in MALFORMED:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(bad)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        assert proxy.counters.rejected_frames == len(MALFORMED)
        assert [r.verdict for r in records] == [Verdict.ERROR] * len(MALFORMED)
        assert all(r.reason.startswith("malformed request") for r in records)
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
    assert bytes(received) == b""
