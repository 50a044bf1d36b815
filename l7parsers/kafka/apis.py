"""API key names and Kafka error codes the parser and the proxy use."""

from __future__ import annotations

from functools import lru_cache

from mesh.policy.kafka import KAFKA_API_NAMES

NONE = 0
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
CLUSTER_AUTHORIZATION_FAILED = 31
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
UNKNOWN_TOPIC_ID = 100


@lru_cache(maxsize=512)
def api_name(api_key: int) -> str:
    """Kafka's own name when the schemas know the key ("Produce"), else Ostium's policy name, else the number."""
    from l7parsers.kafka.schemas import schema_for
    schema = schema_for(api_key)
    if schema is not None:
        return schema.name
    return KAFKA_API_NAMES.get(api_key, str(api_key))
