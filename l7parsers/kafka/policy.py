"""The adapter between parsed requests and mesh.policy's Kafka matching (`L7Policy.check_kafka`).

`check_kafka` wants (api key, version, client id, topic names, transactional id). Two things it does not
know are handled here:
- topics named by ID (Fetch v13+, Produce v13+, OffsetCommit v10+, ...) are resolved to names with the
  `TopicNames` the proxy learns from relayed Metadata responses; an ID nobody can resolve denies the
  request (the rule's topic cannot be checked);
- a request whose body the parser could not read (unknown API key or version) is checked as naming one
  topic that no rule can name, so it passes only a rule that does not restrict topics (an apiKey rule, or a
  role rule without a topic) — never a topic-restricted rule on the strength of an unread body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mesh.policy.l7 import KafkaRequest, L7Policy

from l7parsers.kafka.events import Request, topic_id_str

# No Kafka topic can contain NUL (mesh.policy validates rule topics against Kafka's character set).
OPAQUE_TOPIC = "\x00opaque"
METADATA = 3


class TopicNames:
    """Topic ID → name, learned from the Metadata (and CreateTopics, DescribeTopicPartitions) responses the
    proxy relays. Shared by every connection of one proxy: a client often learns IDs on one broker
    connection and fetches on another. An ID seen with two different names is treated as unknown."""

    __slots__ = ("_names", "_conflicts", "max_entries")

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._names: dict[bytes, str] = {}
        self._conflicts: set[bytes] = set()
        self.max_entries = max_entries

    def learn(self, pairs: tuple[tuple[bytes, str], ...]) -> None:
        for topic_id, name in pairs:
            old = self._names.get(topic_id)
            if old is None:
                if len(self._names) < self.max_entries and topic_id not in self._conflicts:
                    self._names[topic_id] = name
            elif old != name:
                del self._names[topic_id]
                self._conflicts.add(topic_id)

    def name(self, topic_id: bytes) -> str | None:
        return self._names.get(topic_id)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    topics: tuple[str, ...]  # names, IDs resolved (unresolved ones shown as their ID)
    reason: str = ""
    rules: tuple = ()
    denied_topics: tuple[str, ...] = ()  # Metadata only: topics answered with 29, the rest forwarded
    # Metadata for every topic: the broker's answer keeps only the topics this predicate allows.
    topic_filter: Callable[[str], bool] | None = None


def decide(policy: L7Policy | None, identity: int, req: Request, names: TopicNames) -> Decision:
    """The verdict for one request from a peer with `identity` (None policy = no Kafka rules: allow)."""
    topics = list(req.topics)
    unresolved: list[str] = []
    for topic_id in req.topic_ids:
        name = names.name(topic_id)
        if name is None:
            unresolved.append(topic_id_str(topic_id))
        elif name not in topics:
            topics.append(name)
    shown = tuple(topics) + tuple(unresolved)
    if policy is None:
        return Decision(True, shown, "no Kafka policy")
    if unresolved:
        return Decision(False, shown, f"unresolved topic id {unresolved[0]}")
    checked = tuple(topics) if req.parsed else (OPAQUE_TOPIC,)
    kreq = KafkaRequest(req.api_key, req.api_version, req.client_id, checked, req.transactional_id)
    allowed, rules = policy.check_kafka(identity, kreq)
    if allowed:
        if req.api_key == METADATA and req.all_topics:
            return Decision(True, shown, "", rules, topic_filter=_metadata_topic_filter(policy, identity, req))
        return Decision(True, shown, "", rules)
    if req.api_key == METADATA and req.parsed and topics:
        # Metadata is authorized per topic, as a broker's authorizer does: clients ask for all the topics
        # they know in one request, and denying it whole would starve them of broker metadata for the
        # topics they may use. Denied topics come back with TOPIC_AUTHORIZATION_FAILED.
        allowed_topics = []
        denied = []
        all_rules: list = []
        for t in topics:
            ok, refs = policy.check_kafka(identity, KafkaRequest(req.api_key, req.api_version, req.client_id, (t,)))
            (allowed_topics if ok else denied).append(t)
            all_rules.extend(refs)
        if not allowed_topics:
            ok, refs = policy.check_kafka(identity, KafkaRequest(req.api_key, req.api_version, req.client_id, ()))
            if not ok:
                return Decision(False, shown, "no rule allows this request")
            all_rules.extend(refs)
        return Decision(True, shown, f"topics denied: {', '.join(denied)}", tuple(dict.fromkeys(all_rules)),
                        tuple(denied))
    reason = "no rule allows this request" if req.parsed else "unparsed request body and no rule without topics"
    return Decision(False, shown, reason)


def _metadata_topic_filter(policy: L7Policy, identity: int, req: Request) -> Callable[[str], bool] | None:
    """For a Metadata request naming every topic: which topics the answer may show (as a broker's
    authorizer hides topics a client may not describe). None when no rule restricts topics."""
    def allowed(topic: str) -> bool:
        return policy.check_kafka(identity, KafkaRequest(req.api_key, req.api_version, req.client_id, (topic,)))[0]
    if allowed(OPAQUE_TOPIC):
        return None
    return allowed
