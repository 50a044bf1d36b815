"""Sans-IO Kafka protocol parser (h11-style): frames, request/response headers, the fields policy needs.

    parser = RequestParser()
    parser.receive_data(data)
    while (event := parser.next_event()) is not NEED_DATA:
        ...  # Request | ProtocolError | ConnectionClosed
"""

from l7parsers.kafka._readers import FrameError
from l7parsers.kafka.connection import (
    DEFAULT_MAX_FRAME_SIZE, RequestParser, ResponseParser, parse_request, parse_response,
)
from l7parsers.kafka.events import (
    NEED_DATA, ConnectionClosed, ProtocolError, Request, Response, topic_id_str,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE", "NEED_DATA", "ConnectionClosed", "FrameError", "ProtocolError", "Request",
    "RequestParser", "Response", "ResponseParser", "parse_request", "parse_response", "topic_id_str",
]
