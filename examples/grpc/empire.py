"""The Empire's gRPC service (empire.proto) with grpcio's generic handlers: no generated code.

Both messages have one string field (number 1), so the protobuf wire format is written by hand:
tag 0x0a, a varint length, UTF-8 bytes. grpcurl decodes it with empire.proto.

    python3 examples/grpc/empire.py serve --port 50051
    python3 examples/grpc/empire.py call HOST:PORT RequestLanding --ship tiefighter
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures

SERVICE = "ostium.demo.Empire"
METHODS = ("RequestLanding", "ExhaustPort")


def encode(text: str) -> bytes:
    data = text.encode()
    n, out = len(data), bytearray(b"\x0a")
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def decode(buf: bytes) -> str:
    """Field 1 of a one-string message; other fields are skipped only if they are length-delimited."""
    i, text = 0, ""
    while i < len(buf):
        tag = buf[i]
        i += 1
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag & 7 != 2:
            raise ValueError(f"unexpected wire type {tag & 7}")
        if tag >> 3 == 1:
            text = buf[i:i + n].decode()
        i += n
    return text


def _request_landing(ship: str, _ctx) -> str:
    return f"Ship landed: {ship or 'unknown'}"


def _exhaust_port(ship: str, _ctx) -> str:
    return f"Panic: deathstar exploded ({ship or 'unknown'} hit the exhaust port)"


def serve(port: int, workers: int = 8):
    import grpc

    handlers = {
        "RequestLanding": grpc.unary_unary_rpc_method_handler(
            _request_landing, request_deserializer=decode, response_serializer=encode),
        "ExhaustPort": grpc.unary_unary_rpc_method_handler(
            _exhaust_port, request_deserializer=decode, response_serializer=encode),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    return server


def call(target: str, method: str, ship: str, timeout: float = 3.0) -> tuple[int, str]:
    """One unary call: (grpc status code number, reply message or error details)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=encode,
                                   response_deserializer=decode)
        try:
            return 0, stub(ship, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().value[0], exc.details() or ""


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), e.g. as an h2load request body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=50051)
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("method", choices=METHODS)
    c.add_argument("--ship", default="tiefighter")
    c.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port).wait_for_termination()
        return 0
    code, text = call(args.target, args.method, args.ship, args.timeout)
    print(f"{code} {text}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
