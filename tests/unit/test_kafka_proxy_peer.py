"""Which identity the Kafka proxy checks: the source's for ingress rules (the destination's own policy names its
clients), the destination's for egress rules (`peer_is_destination`: the source's policy names the brokers it
may use). Both proxies of the agent get the same identity_for(ip); only the side asked differs."""

from __future__ import annotations

import asyncio
import struct

import pytest
from kafka.protocol.producer import ProduceResponse

from l7parsers.kafkaproxy import KafkaProxy, KafkaRecord, Verdict
from tests.unit.test_kafka_proxy import FakeBroker, policy, produce, read_frame, role

pytestmark = pytest.mark.timeout(30)

CLIENT, BROKER = "127.0.0.3", "127.0.0.2"
IDENTITIES = {CLIENT: 1001, BROKER: 2002}


class BrokerOn(FakeBroker):
    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, BROKER, 0)
        return self.server.sockets[0].getsockname()[:2]


async def produce_through(peer_is_destination: bool, rule_identity: int) -> tuple[int, list[KafkaRecord], list]:
    broker = BrokerOn()
    up = await broker.start()
    records: list[KafkaRecord] = []
    pol = policy(role("produce", "orders"), identities=frozenset({rule_identity}))
    proxy = KafkaProxy(policy_for=lambda s, d, p: pol, identity_for=IDENTITIES.__getitem__, on_record=records.append,
                       upstream=up, peer_is_destination=peer_is_destination,
                       direction="egress" if peer_is_destination else "ingress")
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection(*proxy.address, local_addr=(CLIENT, 0))
        writer.write(produce(["orders"], 7))
        frame = await read_frame(reader)
        writer.close()
        assert struct.unpack_from(">i", frame, 4)[0] == 7
        code = 0
        if not frame.endswith(b"OK"):  # the fake broker's answer ends so; anything else the proxy's denial
            resp = ProduceResponse.decode(frame, version=9, header=True, framed=True)
            code = resp.responses[0].partition_responses[0].error_code
        return code, records, list(broker.received)
    finally:
        await proxy.close()
        await broker.close()


@pytest.mark.parametrize("peer_is_destination, rule_identity, allowed", [
    (False, 1001, True),    # ingress: a rule naming the client
    (False, 2002, False),   # ingress: a rule naming the broker does not admit the client
    (True, 2002, True),     # egress: a rule naming the broker
    (True, 1001, False),    # egress: a rule naming the client itself does not open the broker
])
async def test_the_policy_is_checked_against_the_right_side(peer_is_destination, rule_identity, allowed):
    code, records, received = await produce_through(peer_is_destination, rule_identity)
    assert (code, received) == ((0, [7]) if allowed else (29, []))
    assert [r.verdict for r in records] == [Verdict.FORWARDED if allowed else Verdict.DENIED]
    # The record names the source's identity either way (the flow's source).
    assert records[0].src_identity == 1001 and records[0].src_ip == CLIENT
    assert records[0].direction == ("egress" if peer_is_destination else "ingress")
