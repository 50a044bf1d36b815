"""Transparent mode: a flow to the broker's own address is diverted to the proxy's IP_TRANSPARENT listener
(here by netfilter TPROXY, standing in for the datapath's bpf_sk_assign: both hand the proxy a socket
whose local address is the original destination), and the proxy finds the broker with getsockname().

Runs in a private network namespace (`unshare --net`), so nothing on the host changes; the namespace
dies with the child process, also when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import require_binary

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

BROKER = "10.77.0.9"
MARK = 0x400

CHILD = textwrap.dedent(f"""
    import asyncio, json, struct, subprocess, sys
    sys.path.insert(0, {os.getcwd()!r})
    from kafka.protocol.producer import ProduceRequest, ProduceResponse
    from l7parsers.kafka import parse_request
    from l7parsers.kafkaproxy import KafkaProxy
    from mesh.policy.kafka import KAFKA_ROLE_API_KEYS
    from mesh.policy.l7 import L7Entry, L7Policy
    from mesh.policy.model import KafkaRule

    def sh(cmd, stdin=None):
        subprocess.run(cmd, shell=True, check=True, input=stdin, text=True)

    sh("ip link set lo up")
    sh("ip addr add {BROKER}/32 dev lo")
    sh("ip rule add fwmark 0x200/0xf00 lookup 100")
    sh("ip route add local 0.0.0.0/0 dev lo table 100")
    sh("nft -f -", stdin='''
    table ip ostium_kafka_test {{
      chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        meta mark & 0xf00 == {MARK:#x} return
        ip daddr {BROKER} tcp dport 9092 tproxy to 127.0.0.1:15099 meta mark set 0x200 accept
      }}
    }}''')

    def produce(topic, cid):
        P = ProduceRequest.TopicProduceData
        msg = ProduceRequest[9](transactional_id=None, acks=1, timeout_ms=100, topic_data=[
            P(name=topic, partition_data=[P.PartitionProduceData(index=0, records=b"r" * 20)])])
        msg.with_header(correlation_id=cid, client_id="pod-a")
        return bytes(msg.encode(header=True, framed=True))

    async def main():
        seen = []
        async def broker(reader, writer):
            while True:
                try:
                    head = await reader.readexactly(4)
                except asyncio.IncompleteReadError:
                    return
                body = await reader.readexactly(struct.unpack(">i", head)[0])
                req = parse_request(head + body)
                seen.append([req.correlation_id, list(req.topics), writer.get_extra_info("peername")[0]])
                payload = struct.pack(">i", req.correlation_id) + b"\\x00" + b"OK"
                writer.write(struct.pack(">i", len(payload)) + payload)
        server = await asyncio.start_server(broker, "{BROKER}", 9092)
        pol = L7Policy("kafka", (L7Entry(None, None, (KafkaRule(role="produce", topic="orders",
                                 api_keys=KAFKA_ROLE_API_KEYS["produce"]),), ()),))
        asked = []
        records = []
        def policy_for(src, dst, port):
            asked.append([src, dst, port])
            return pol
        proxy = KafkaProxy(policy_for=policy_for, identity_for=lambda ip: 1234, on_record=records.append,
                           listen=("127.0.0.1", 15099), transparent=True, upstream_mark={MARK})
        await proxy.start()
        reader, writer = await asyncio.open_connection("{BROKER}", 9092)
        local = writer.get_extra_info("peername")
        writer.write(produce("orders", 1) + produce("secret", 2))
        frames = []
        for _ in range(2):
            head = await asyncio.wait_for(reader.readexactly(4), 5)
            frames.append(head + await reader.readexactly(struct.unpack(">i", head)[0]))
        denied = ProduceResponse.decode(frames[1], version=9, header=True, framed=True)
        writer.close()
        await proxy.close()
        server.close()
        print(json.dumps({{"client_peer": list(local), "asked": asked, "broker_saw": seen,
                          "answers": [struct.unpack_from(">i", f, 4)[0] for f in frames],
                          "denied_code": denied.responses[0].partition_responses[0].error_code,
                          "records": [[r.verdict, r.dst_ip, r.dst_port, list(r.topics)] for r in records]}}))

    asyncio.run(main())
""")


def test_transparent_listener_forwards_to_the_original_destination():
    for tool in ("unshare", "ip", "nft"):
        require_binary(tool)
    out = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=45, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The client dialled the broker and was answered "by the broker's address".
    assert result["client_peer"] == [BROKER, 9092]
    # Policy was asked about the original destination, found with getsockname().
    assert result["asked"][0][1:] == [BROKER, 9092]
    # Only the allowed request reached the broker; the denied one was answered by the proxy, in order.
    assert [s[:2] for s in result["broker_saw"]] == [[1, ["orders"]]]
    assert result["answers"] == [1, 2] and result["denied_code"] == 29
    assert result["records"] == [["FORWARDED", BROKER, 9092, ["orders"]], ["DENIED", BROKER, 9092, ["secret"]]]
