"""A small Kafka client for the Kafka demo (kafka-python), run inside an endpoint:

    python3 examples/kafka/client.py produce BOOTSTRAP TOPIC MESSAGE [--client-id ID] [--json]
    python3 examples/kafka/client.py consume BOOTSTRAP TOPIC --group GROUP [--count N | --expect MSG] [--json]

It prints one line: what was asked, and what Kafka answered in the client's own terms (an offset, the
messages, or the error class kafka-python raised, e.g. TopicAuthorizationFailedError when the mesh's Kafka
policy denied the request). `--json` prints the same as a JSON object for scripts and tests.
Exit code: 0 answered and allowed, 1 a Kafka error (denied), 2 no answer in time (e.g. dropped at L3/L4).
Timeouts are short on purpose (a denial is an answer, it comes at once; a drop is silence).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# A consumer group joins in ~3 s with these (Kafka's defaults take ~25 s against Tansu).
FAST_GROUP = dict(session_timeout_ms=3000, heartbeat_interval_ms=500, max_poll_interval_ms=3000)


def produce(args: argparse.Namespace) -> dict:
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, client_id=args.client_id, acks=1, retries=0,
                             request_timeout_ms=3000, max_block_ms=args.timeout_ms,
                             bootstrap_timeout_ms=args.timeout_ms)
    try:
        meta = producer.send(args.topic, args.message.encode()).get(args.timeout_ms / 1000)
        return {"ok": True, "offset": meta.offset, "partition": meta.partition}
    finally:
        producer.close(timeout=2)


def consume(args: argparse.Namespace) -> dict:
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, client_id=args.client_id,
                             group_id=args.group, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=args.timeout_ms, request_timeout_ms=5000,
                             bootstrap_timeout_ms=args.timeout_ms,
                             **FAST_GROUP)
    try:
        got: list[str] = []
        waiting = set(args.expect)
        for msg in consumer:
            got.append(msg.value.decode(errors="replace"))
            waiting.discard(got[-1])
            if (args.expect and not waiting) or (not args.expect and len(got) >= args.count):
                break
        if got:
            consumer.commit()  # OffsetCommit: the group's progress, part of the consume role
        return {"ok": bool(got), "messages": got, **({} if got else {"error": "no messages within the timeout"})}
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="op", required=True)
    for name in ("produce", "consume"):
        s = sub.add_parser(name)
        s.add_argument("bootstrap", help="HOST:PORT of the broker")
        s.add_argument("topic")
        if name == "produce":
            s.add_argument("message")
        else:
            s.add_argument("--group", required=True)
            s.add_argument("--count", type=int, default=1, help="stop after N messages (default 1)")
            s.add_argument("--expect", action="append", default=[], metavar="MESSAGE",
                           help="stop once this message arrived (repeatable; instead of --count)")
        s.add_argument("--client-id", default=f"demo-{name}r")
        s.add_argument("--timeout-ms", type=int, default=8000)
        s.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    started = time.monotonic()
    try:
        result = produce(args) if args.op == "produce" else consume(args)
        code = 0 if result["ok"] else 1
    except (KafkaConnectionError, KafkaTimeoutError) as exc:  # no answer: the broker is out of reach
        result, code = {"ok": False, "error": type(exc).__name__}, 2
    except KafkaError as exc:
        result, code = {"ok": False, "error": type(exc).__name__}, 1
    result = {"op": args.op, "topic": args.topic, "client_id": args.client_id, **result,
              "seconds": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        asked = f'produce {args.topic} "{args.message}"' if args.op == "produce" else \
            f"consume {args.topic} (group {args.group})"
        if not result["ok"]:
            what = result["error"]
        elif args.op == "produce":
            what = f"offset {result['offset']}"
        else:
            what = f"{len(result['messages'])} message(s): {', '.join(result['messages'])}"
        print(f"{asked} -> {what}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
