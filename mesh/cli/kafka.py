"""`ostium kafka decode`: one Kafka frame from stdin (raw bytes, or hex with --hex) → the parsed request
(or, with --response --api-key N --api-version V, the parsed response) as JSON. A debugging aid, and the
public face of l7parsers.kafka: it prints exactly what the proxy's policy check sees.

Offline: no agent needed. Exit 2 with one line on stderr when the input is not a Kafka frame.
"""

from __future__ import annotations

import binascii
import struct
import sys

from mesh.cli.output import add_output_flag, emit
from mesh.errors import ValidationError


def register(sub) -> None:
    p = sub.add_parser("kafka", help="Kafka protocol tools: decode")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    d = verbs.add_parser("decode", help="decode one Kafka frame read from stdin")
    d.add_argument("--hex", action="store_true", help="stdin is hex text (whitespace ignored), not raw bytes")
    d.add_argument("--response", action="store_true",
                   help="the frame is a response (needs --api-key and --api-version of its request)")
    d.add_argument("--api-key", type=int, help="the request's API key (with --response)")
    d.add_argument("--api-version", type=int, help="the request's API version (with --response)")
    d.add_argument("--full", action="store_true",
                   help="also decode the whole body with kafka-python's schema codec (record batches included)")
    add_output_flag(d, default="json", choices=("json", "yaml"))
    d.set_defaults(func=decode_cmd)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _read_frame(args) -> bytes:
    data = sys.stdin.buffer.read()
    if args.hex:
        text = b"".join(data.split())
        if text[:2].lower() == b"0x":
            text = text[2:]
        try:
            data = binascii.unhexlify(text)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"stdin is not hex: {exc}", path="stdin") from None
    if len(data) < 4:
        raise ValidationError(f"a Kafka frame needs a 4-byte size prefix; got {len(data)} bytes", path="stdin")
    (size,) = struct.unpack_from(">i", data)
    if size != len(data) - 4:
        raise ValidationError(f"the size prefix says {size} bytes but {len(data) - 4} follow it "
                              "(one whole frame, size prefix included, is expected)", path="stdin")
    return data


def decode_cmd(args) -> int:
    from l7parsers.kafka import FrameError, parse_request, parse_response

    if args.response and (args.api_key is None or args.api_version is None):
        raise ValidationError("--response needs --api-key and --api-version (a response does not name its API)",
                              path="--api-key")
    frame = _read_frame(args)
    try:
        if args.response:
            msg = parse_response(frame, args.api_key, args.api_version)
        else:
            msg = parse_request(frame)
    except FrameError as exc:
        raise ValidationError(f"not a valid Kafka {'response' if args.response else 'request'}: {exc}",
                              path="stdin") from None
    out = msg.to_dict()
    if args.full:
        out["body"] = _full(frame, msg, args)
    emit(out, args.output)
    return 0


def _full(frame: bytes, msg, args):
    from l7parsers.kafka.responses import decode_request_body, message_class

    try:
        if args.response:
            cls = message_class(args.api_key, "response")
            if cls is None:
                return None
            return cls.decode(frame, version=args.api_version, header=True, framed=True).to_dict()
        return decode_request_body(msg).to_dict()
    except Exception as exc:  # kafka-python's errors vary; the lean parse above already succeeded
        return {"error": f"kafka-python could not decode the body: {exc}"}
