"""Sans-IO Kafka connection halves, in the manner of h11: bytes in with receive_data(), events out with
next_event(). No sockets, no clocks: the proxy owns I/O and timeouts.

`RequestParser` reads what a client sends (requests); `ResponseParser` reads what a broker sends back,
told by `expect()` which request each response answers (Kafka answers in request order per connection).
"""

from __future__ import annotations

from collections import deque
from struct import Struct, error as StructError

from l7parsers.kafka._readers import (
    CONFIG_RESOURCE_TOPIC, LEARN_TOPIC_IDS_FROM, FrameError, read_string, request_plan,
    response_header_version, response_reader, skip_tagged_fields,
)
from l7parsers.kafka.events import (
    NEED_DATA, ConnectionClosed, Event, ProtocolError, Request, Response,
)

DEFAULT_MAX_FRAME_SIZE = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes default (100 MiB)

_I32 = Struct(">i")
_REQ_HEAD = Struct(">hhi")

# FindCoordinator key types.
_KEY_GROUP, _KEY_TRANSACTION, _KEY_SHARE = 0, 1, 2


class _FrameSplitter:
    """Size-prefixed frames out of a byte stream (INT32 size, then that many bytes)."""

    __slots__ = ("_buf", "_start", "max_frame_size", "_min_size")

    def __init__(self, max_frame_size: int, min_size: int) -> None:
        self._buf = bytearray()
        self._start = 0
        self.max_frame_size = max_frame_size
        self._min_size = min_size

    def feed(self, data: bytes) -> None:
        if self._start and self._start == len(self._buf):
            self._buf.clear()
            self._start = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._start

    def next_frame(self) -> bytes | None:
        start = self._start
        buf = self._buf
        if len(buf) - start < 4:
            return None
        size = _I32.unpack_from(buf, start)[0]
        if size < 0:
            raise FrameError(f"negative frame size {size}")
        if size > self.max_frame_size:
            raise FrameError(f"frame of {size} bytes exceeds the limit of {self.max_frame_size}")
        if size < self._min_size:
            raise FrameError(f"frame of {size} bytes is shorter than a header")
        end = start + 4 + size
        if len(buf) < end:
            return None
        frame = bytes(buf[start:end])
        if end == len(buf):
            buf.clear()
            self._start = 0
        elif end > 1 << 20:  # drop consumed bytes now and then, not on every frame
            del buf[:end]
            self._start = 0
        else:
            self._start = end
        return frame


class _Half:
    def __init__(self, max_frame_size: int, min_size: int) -> None:
        self._frames = _FrameSplitter(max_frame_size, min_size)
        self._error: ProtocolError | None = None
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if not data:
            self._eof = True
        elif not self._eof:
            self._frames.feed(data)

    @property
    def partial_frame(self) -> bool:
        """True while an incomplete frame is buffered (the proxy times such a peer out)."""
        return self._frames.buffered > 0

    @property
    def max_frame_size(self) -> int:
        return self._frames.max_frame_size

    def _fail(self, reason: str, **kw: int | None) -> ProtocolError:
        self._error = ProtocolError(reason, **kw)
        return self._error

    def _next_frame(self) -> bytes | Event:
        if self._error is not None:
            return self._error
        try:
            frame = self._frames.next_frame()
        except FrameError as exc:
            return self._fail(str(exc))
        if frame is None:
            if self._eof:
                if self._frames.buffered:
                    return self._fail(f"connection closed in the middle of a frame "
                                      f"({self._frames.buffered} bytes buffered)")
                return ConnectionClosed()
            return NEED_DATA
        return frame


class RequestParser(_Half):
    """The client → broker direction."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size, 8)

    def next_event(self) -> Event:
        frame = self._next_frame()
        if not isinstance(frame, bytes):
            return frame
        try:
            return parse_request(frame)
        except FrameError as exc:
            head = _peek_header(frame)
            return self._fail(str(exc), **head)


class ResponseParser(_Half):
    """The broker → client direction. Call expect() for every forwarded request that gets a response."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size, 4)
        self._expected: deque[tuple[int, int, int]] = deque()

    def expect(self, correlation_id: int, api_key: int, api_version: int) -> None:
        self._expected.append((correlation_id, api_key, api_version))

    @property
    def outstanding(self) -> int:
        return len(self._expected)

    def next_event(self) -> Event:
        frame = self._next_frame()
        if not isinstance(frame, bytes):
            return frame
        correlation_id = _I32.unpack_from(frame, 4)[0]
        if not self._expected:
            return self._fail(f"response with correlation id {correlation_id} to no outstanding request",
                              correlation_id=correlation_id)
        want, api_key, api_version = self._expected.popleft()
        if correlation_id != want:
            return self._fail(f"response correlation id {correlation_id}, expected {want}",
                              correlation_id=correlation_id, api_key=api_key, api_version=api_version)
        try:
            return parse_response(frame, api_key, api_version)
        except FrameError as exc:
            return self._fail(str(exc), correlation_id=correlation_id, api_key=api_key, api_version=api_version)


def _peek_header(frame: bytes) -> dict[str, int | None]:
    if len(frame) < 12:
        return {}
    api_key, api_version, correlation_id = _REQ_HEAD.unpack_from(frame, 4)
    return {"api_key": api_key, "api_version": api_version, "correlation_id": correlation_id}


def parse_request(frame: bytes) -> Request:
    """One whole request frame (size prefix included) → Request. Raises FrameError."""
    try:
        return _parse_request(frame)
    except (StructError, IndexError):
        raise FrameError("frame is truncated (a field runs past its end)") from None


def _parse_request(frame: bytes) -> Request:
    api_key, api_version, correlation_id = _REQ_HEAD.unpack_from(frame, 4)
    if api_key < 0 or api_version < 0:
        raise FrameError(f"invalid request header (api key {api_key}, version {api_version})")
    header_version, reader = request_plan(api_key, api_version)
    pos = 12
    client_id = None
    if header_version != 0:
        client_id, pos = read_string(frame, pos, False)  # never compact, even in header v2
    if header_version == 2:
        pos = skip_tagged_fields(frame, pos)
    if reader is None:
        # Unknown key or version: the header up to the client id is the same in every version.
        return Request(api_key, api_version, correlation_id, client_id,
                       1 if header_version is None else header_version, pos, frame, parsed=False)
    out: list = []
    end = reader(frame, pos, out)
    if end != len(frame):
        if end > len(frame):
            raise FrameError("frame is truncated (a field runs past its end)")
        raise FrameError(f"{len(frame) - end} bytes left over after the request body")
    return _request_from(api_key, api_version, correlation_id, client_id, header_version, pos, frame, out)


def _request_from(api_key: int, api_version: int, correlation_id: int, client_id: str | None,
                  header_version: int, body_offset: int, frame: bytes, out: list) -> Request:
    if not out and api_key != 3:  # nothing policy needs beyond the header (Metadata v0: see below)
        return Request(api_key, api_version, correlation_id, client_id, header_version, body_offset, frame)
    topics: list[str] = []
    topic_ids: list[bytes] = []
    groups: list[str] = []
    txns: list[str] = []
    acks = None
    rtype = None
    ckeys: list[str] = []
    ckeytype = _KEY_GROUP
    all_topics = False
    for role, value in out:
        if role == "topic":
            topics.append(value)
        elif role == "topic_id":
            if value != _ZERO_ID:  # Kafka's ZERO_UUID: "no ID, the name is used" (Metadata v10+)
                topic_ids.append(value)
        elif role == "group":
            groups.append(value)
        elif role == "txn":
            txns.append(value)
        elif role == "acks":
            acks = value
        elif role == "rtype":
            rtype = value
        elif role == "rname":
            if rtype == CONFIG_RESOURCE_TOPIC:
                topics.append(value)
        elif role == "ckey":
            ckeys.append(value)
        elif role == "ckeytype":
            ckeytype = value
        elif role == "all_topics":
            all_topics = True
    if api_key == 3 and api_version == 0 and not topics:
        all_topics = True  # Metadata v0 has no null: an empty list means every topic
    for key in ckeys:
        if ckeytype == _KEY_TRANSACTION:
            txns.append(key)
        elif ckeytype == _KEY_SHARE:
            groups.append(key.split(":", 1)[0])  # "groupId:topicId:partition"
        else:
            groups.append(key)
    return Request(api_key, api_version, correlation_id, client_id, header_version, body_offset, frame,
                   True, _unique(topics), _unique(topic_ids), _unique(groups), _unique(txns), acks, all_topics)


def _unique(items: list) -> tuple:
    if len(items) < 2:
        return tuple(items)
    return tuple(dict.fromkeys(items))


def parse_response(frame: bytes, api_key: int, api_version: int) -> Response:
    """One whole response frame → Response; topic ID → name pairs are read from Metadata, CreateTopics and
    DescribeTopicPartitions responses (the rest of a response body is not looked at)."""
    try:
        correlation_id = _I32.unpack_from(frame, 4)[0]
        header_version = response_header_version(api_key, api_version)
        pos = 8
        if header_version == 1:
            pos = skip_tagged_fields(frame, pos)
        pairs: tuple[tuple[bytes, str], ...] = ()
        if api_key in LEARN_TOPIC_IDS_FROM:
            reader = response_reader(api_key, api_version)
            if reader is not None:
                out: list = []
                if reader(frame, pos, out) != len(frame):
                    raise FrameError("response body does not match its schema")
                pairs = _pairs(out)
        return Response(api_key, api_version, correlation_id, header_version, frame, pairs)
    except (StructError, IndexError):
        raise FrameError("response is truncated (a field runs past its end)") from None


_ZERO_ID = bytes(16)


def _pairs(out: list) -> tuple[tuple[bytes, str], ...]:
    pairs = []
    name = None
    for role, value in out:
        if role == "topic":
            name = value
        elif role == "topic_id":
            if name is not None and value != _ZERO_ID:
                pairs.append((value, name))
            name = None
    return tuple(pairs)
