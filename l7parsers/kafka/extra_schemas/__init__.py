"""Message definitions kafka-python 3.0.12 does not ship, in Kafka's JSON schema format.

Written from Kafka's protocol guide (KIP-848 ConsumerGroupHeartbeat, KIP-714 client telemetry: librdkafka
sends GetTelemetrySubscriptions to every broker that advertises it). Loaded by l7parsers.kafka.schemas
for the lean reader and by l7parsers.kafka.responses to encode denials with kafka-python's codec.
"""
