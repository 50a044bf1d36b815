"""Kafka API keys and policy roles, as Cilium names them. No imports: the Kafka proxy reuses this.

Names are Cilium's lowercase spellings (``pkg/policy/api/kafka``: ``produce``, ``fetch``, ``offsets``,
``metadata`` ...) plus ``listoffsets`` as an alias of ``offsets`` (Kafka's own name for key 2) and the
APIs Kafka added after Cilium froze its table (``saslauthenticate`` ... ``describetopicpartitions``),
named the same way: Kafka's name, lowercased. Matching is case-insensitive, as in Cilium.
The numbers are Kafka's (https://kafka.apache.org/protocol#protocol_api_keys).
"""

from __future__ import annotations

KAFKA_API_KEYS: dict[str, int] = {
    "produce": 0,
    "fetch": 1,
    "offsets": 2,
    "listoffsets": 2,
    "metadata": 3,
    "leaderandisr": 4,
    "stopreplica": 5,
    "updatemetadata": 6,
    "controlledshutdown": 7,
    "offsetcommit": 8,
    "offsetfetch": 9,
    "findcoordinator": 10,
    "joingroup": 11,
    "heartbeat": 12,
    "leavegroup": 13,
    "syncgroup": 14,
    "describegroups": 15,
    "listgroups": 16,
    "saslhandshake": 17,
    "apiversions": 18,
    "createtopics": 19,
    "deletetopics": 20,
    "deleterecords": 21,
    "initproducerid": 22,
    "offsetforleaderepoch": 23,
    "addpartitionstotxn": 24,
    "addoffsetstotxn": 25,
    "endtxn": 26,
    "writetxnmarkers": 27,
    "txnoffsetcommit": 28,
    "describeacls": 29,
    "createacls": 30,
    "deleteacls": 31,
    "describeconfigs": 32,
    "alterconfigs": 33,
    # After Cilium's table: Kafka's names, lowercased.
    "alterreplicalogdirs": 34,
    "describelogdirs": 35,
    "saslauthenticate": 36,
    "createpartitions": 37,
    "createdelegationtoken": 38,
    "renewdelegationtoken": 39,
    "expiredelegationtoken": 40,
    "describedelegationtoken": 41,
    "deletegroups": 42,
    "electleaders": 43,
    "incrementalalterconfigs": 44,
    "alterpartitionreassignments": 45,
    "listpartitionreassignments": 46,
    "offsetdelete": 47,
    "describeclientquotas": 48,
    "alterclientquotas": 49,
    "describeuserscramcredentials": 50,
    "alteruserscramcredentials": 51,
    "describequorum": 55,
    "updatefeatures": 57,
    "describecluster": 60,
    "describeproducers": 61,
    "describetransactions": 65,
    "listtransactions": 66,
    "consumergroupheartbeat": 68,
    "consumergroupdescribe": 69,
    "gettelemetrysubscriptions": 71,
    "pushtelemetry": 72,
    "listconfigresources": 74,
    "describetopicpartitions": 75,
}

# Key number → the canonical (Cilium) name; the alias `listoffsets` does not replace `offsets`.
KAFKA_API_NAMES: dict[int, str] = {}
for _name, _key in KAFKA_API_KEYS.items():
    KAFKA_API_NAMES.setdefault(_key, _name)

PRODUCE = 0
FETCH = 1
INIT_PRODUCER_ID = 22

ROLE_PRODUCE = "produce"
ROLE_CONSUME = "consume"

# Cilium's role sets, plus what current clients need (DESIGN.md "Kafka"): InitProducerId under
# `produce` (only with a null transactional id, checked by the matcher) and OffsetForLeaderEpoch
# under `consume`; client telemetry (GetTelemetrySubscriptions 71, PushTelemetry 72, KIP-714), which
# librdkafka 2.x sends on every connection and which names no topic, under both.
KAFKA_ROLE_API_KEYS: dict[str, frozenset[int]] = {
    ROLE_PRODUCE: frozenset({0, 3, 18, 22, 71, 72}),
    ROLE_CONSUME: frozenset({1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 23, 71, 72}),
}

# Kafka topic names: Cilium's limit (255, for old brokers) and character set.
MAX_TOPIC_LEN = 255
TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def api_key_number(name: str) -> int | None:
    """The API key number for a Cilium-style name (case-insensitive), or None."""
    return KAFKA_API_KEYS.get(name.lower())


def api_key_name(key: int) -> str:
    return KAFKA_API_NAMES.get(key, str(key))
