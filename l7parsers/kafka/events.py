"""Events the Kafka parsers produce: small immutable objects, as in h11."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """No complete frame buffered: call receive_data() with more bytes."""


def topic_id_str(raw: bytes) -> str:
    """Kafka's own rendering of a topic ID (Uuid.toString: URL-safe base64, no padding)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Request:
    """One client request. `frame` is the whole frame as received (size prefix included): forwarded as is.

    `parsed` is False when the API key or version is unknown to the schemas: the header was read, the body
    is opaque and the topic/group fields are empty (policy treats such a request as naming unknown topics).
    """

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    header_version: int
    body_offset: int  # offset of the body in `frame`
    frame: bytes = field(repr=False)
    parsed: bool = True
    topics: tuple[str, ...] = ()
    topic_ids: tuple[bytes, ...] = ()
    groups: tuple[str, ...] = ()
    transactional_ids: tuple[str, ...] = ()
    acks: int | None = None  # Produce only
    all_topics: bool = False  # Metadata with a null topic list: the broker answers with every topic

    @property
    def transactional_id(self) -> str | None:
        return self.transactional_ids[0] if self.transactional_ids else None

    @property
    def expects_response(self) -> bool:
        """A Produce with acks=0 gets no response from the broker (and none from the proxy)."""
        return not (self.api_key == 0 and self.acks == 0)

    @property
    def body(self) -> bytes:
        return self.frame[self.body_offset:]

    def to_dict(self) -> dict[str, Any]:
        from l7parsers.kafka.apis import api_name
        return {
            "api_key": self.api_key, "api": api_name(self.api_key), "api_version": self.api_version,
            "correlation_id": self.correlation_id, "client_id": self.client_id,
            "header_version": self.header_version, "size": len(self.frame) - 4, "parsed": self.parsed,
            "topics": list(self.topics), "topic_ids": [topic_id_str(t) for t in self.topic_ids],
            "groups": list(self.groups), "transactional_ids": list(self.transactional_ids),
            **({"acks": self.acks} if self.acks is not None else {}),
            **({"all_topics": True} if self.all_topics else {}),
        }


@dataclass(frozen=True, slots=True)
class Response:
    """One broker response, matched to the request it answers (responses come back in request order)."""

    api_key: int
    api_version: int
    correlation_id: int
    header_version: int
    frame: bytes = field(repr=False)
    topic_names_by_id: tuple[tuple[bytes, str], ...] = ()  # learned from Metadata-like responses

    def to_dict(self) -> dict[str, Any]:
        from l7parsers.kafka.apis import api_name
        return {
            "api_key": self.api_key, "api": api_name(self.api_key), "api_version": self.api_version,
            "correlation_id": self.correlation_id, "header_version": self.header_version,
            "size": len(self.frame) - 4,
            "topics": [{"name": n, "topic_id": topic_id_str(i)} for i, n in self.topic_names_by_id],
        }


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The byte stream is not Kafka (or breaks its schema). The connection cannot continue: once this
    event is returned, every later next_event() returns it again."""

    reason: str
    correlation_id: int | None = None
    api_key: int | None = None
    api_version: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side cleanly, at a frame boundary."""


Event = Request | Response | ProtocolError | ConnectionClosed | type[NEED_DATA]
