"""Kafka proxy: produce throughput and latency through the proxy vs straight to the broker, same run.

Broker: Tansu (memory storage), two instances started by this script — one advertising itself (direct),
one advertising the proxy (so every connection the client opens after bootstrap goes through it).
Proxy: l7parsers.kafkaproxy.KafkaProxy in its own process (as in the agent), uvloop when installed,
with a Kafka policy that allows `role: produce` on the benchmark topic — every request is parsed and
checked.
Client: confluent-kafka (librdkafka, C), so the client is not the bottleneck.

- throughput: N messages of 1 KiB, acks=1, as fast as the producer can batch them (MB/s, msg/s);
- latency: one 1 KiB message at a time (produce + flush), p50/p99 of the round trip;
- parser: RequestParser frames/s on Produce frames (one 16 KiB record batch) and small Metadata frames.

Target (issue 6): proxy throughput >= 70% of direct.
Run: .venv/bin/python benchmarks/bench_kafka.py [--messages 100000] [--latency-samples 1500] [--rounds 3]
(rounds alternate direct and proxy; medians are reported)
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TOPIC = "bench"
PAYLOAD = b"x" * 1024


def serve_proxy(listen_port: int, upstream_port: int) -> None:
    """Child process: run the proxy until SIGTERM, then print its counters."""
    import asyncio

    from l7parsers.kafkaproxy import KafkaProxy
    from mesh.policy.kafka import KAFKA_ROLE_API_KEYS
    from mesh.policy.l7 import L7Entry, L7Policy
    from mesh.policy.model import KafkaRule

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    pol = L7Policy("kafka", (L7Entry(None, None, (KafkaRule(role="produce", topic=TOPIC,
                                                            api_keys=KAFKA_ROLE_API_KEYS["produce"]),), ()),))

    async def main() -> None:
        records = collections.deque(maxlen=10_000)  # records are built, as the agent's flow observer needs
        proxy = KafkaProxy(policy_for=lambda s, d, p: pol, identity_for=lambda ip: 1000, on_record=records.append,
                           listen=("127.0.0.1", listen_port), upstream=("127.0.0.1", upstream_port))
        await proxy.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print(proxy.counters, flush=True)
        await proxy.close()
    asyncio.run(main())


def produce_throughput(bootstrap: str, n: int) -> float:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5, "batch.size": 1 << 20,
                  "queue.buffering.max.messages": n + 10, "queue.buffering.max.kbytes": 2 * 1024 * 1024,
                  "enable.idempotence": False})
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
    p.produce(TOPIC, PAYLOAD, partition=0, callback=cb)  # warm up: metadata, connections
    p.flush(10)
    t0 = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(TOPIC, PAYLOAD, partition=0, callback=cb)
                break
            except BufferError:
                p.poll(0.01)
    remaining = p.flush(60)
    elapsed = time.perf_counter() - t0
    if remaining or errors:
        raise RuntimeError(f"{remaining} messages undelivered, {len(errors)} errors: {errors[:3]}")
    return elapsed


def produce_latency(bootstrap: str, samples: int) -> list[float]:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 0, "enable.idempotence": False})
    p.produce(TOPIC, PAYLOAD, partition=0)
    p.flush(10)
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        p.produce(TOPIC, PAYLOAD, partition=0)
        if p.flush(10):
            raise RuntimeError("latency probe not delivered")
        out.append(time.perf_counter() - t0)
    return out


def parser_rate(seconds: float = 2.0) -> dict[str, float]:
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.memory_records import MemoryRecordsBuilder

    from l7parsers.kafka import NEED_DATA, RequestParser

    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    for _ in range(16):
        b.append(timestamp=None, key=None, value=PAYLOAD, headers=[])
    b.close()
    P = ProduceRequest.TopicProduceData
    produce = ProduceRequest[9](transactional_id=None, acks=1, timeout_ms=3000, topic_data=[
        P(name=TOPIC, partition_data=[P.PartitionProduceData(index=0, records=bytes(b.buffer()))])])
    produce.with_header(correlation_id=1, client_id="bench")
    md = MetadataRequest[12](topics=[MetadataRequest.MetadataRequestTopic(name=TOPIC)],
                             allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    md.with_header(correlation_id=2, client_id="bench")
    out = {}
    for name, frame in (("produce (16 KiB batch)", bytes(produce.encode(header=True, framed=True))),
                        ("metadata", bytes(md.encode(header=True, framed=True)))):
        chunk = frame * 64
        parser = RequestParser()
        frames = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            parser.receive_data(chunk)
            while parser.next_event() is not NEED_DATA:
                frames += 1
        out[name] = frames / (time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--latency-samples", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve-proxy", nargs=2, type=int, metavar=("LISTEN", "UPSTREAM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_proxy:
        serve_proxy(*args.serve_proxy)
        return 0

    from tests.kafka_fixture import free_port, tansu_broker, wait_port

    results: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []), "proxy": ([], [])}
    proxy_port, proxied_broker = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-proxy", str(proxy_port), str(proxied_broker)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_port("127.0.0.1", proxy_port)
        with tansu_broker() as direct, \
                tansu_broker(port=proxied_broker, advertise=("127.0.0.1", proxy_port)):
            targets = {"direct": direct.bootstrap, "proxy": f"127.0.0.1:{proxy_port}"}
            # Interleaved rounds, median reported: the machine is shared, one round each is noise.
            for rnd in range(args.rounds):
                for name, bootstrap in targets.items():
                    print(f"round {rnd + 1}/{args.rounds}: {name}: {args.messages} x 1 KiB, acks=1", flush=True)
                    results[name][0].append(produce_throughput(bootstrap, args.messages))
                    results[name][1].extend(produce_latency(bootstrap, args.latency_samples // args.rounds))
    finally:
        proc.send_signal(signal.SIGTERM)
        counters = proc.communicate(timeout=10)[0].strip()
    print(f"proxy counters: {counters}")

    mb = args.messages * len(PAYLOAD) / 1e6
    print(f"\n{'':8} {'msg/s':>10} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (runs, lat) in results.items():
        elapsed = statistics.median(runs)
        print(f"{name:8} {args.messages / elapsed:10.0f} {mb / elapsed:8.1f} {statistics.median(lat) * 1e3:8.3f} "
              f"{pct(lat, 0.99) * 1e3:8.3f}")
    for name, (runs, _) in results.items():
        print(f"{name:8} rounds (msg/s): " + ", ".join(f"{args.messages / r:,.0f}" for r in runs))
    ratio = statistics.median(results["direct"][0]) / statistics.median(results["proxy"][0])
    p99_delta = (pct(results["proxy"][1], 0.99) - pct(results["direct"][1], 0.99)) * 1e3
    print(f"\nthroughput ratio proxy/direct: {ratio:.2f} (target >= 0.70) "
          f"{'OK' if ratio >= 0.70 else 'BELOW TARGET'}; p99 added by the proxy: {p99_delta:+.3f} ms")
    for name, rate in parser_rate().items():
        print(f"parser: {name}: {rate:,.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
