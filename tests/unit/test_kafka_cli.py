"""`ostium kafka decode`: a frame on stdin → JSON; bad input → exit 2 with one line on stderr."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from mesh.cli.main import main

try:
    from tests.kafka_fixture import sample_request
except ModuleNotFoundError:
    from kafka_fixture import sample_request


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def run(monkeypatch, capsys, data: bytes, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    rc = main(["kafka", "decode", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_decode_hex_request_prints_what_policy_sees(monkeypatch, capsys):
    frame, _ = sample_request(1, 12)
    rc, out, _ = run(monkeypatch, capsys, frame.hex().encode() + b"\n", "--hex")
    assert rc == 0
    doc = json.loads(out)
    assert doc["api"] == "Fetch" and doc["api_version"] == 12 and doc["topics"] == ["orders", "payments"]
    assert doc["client_id"] == "client-é" and doc["header_version"] == 2


def test_decode_raw_request_with_full_body(monkeypatch, capsys):
    frame, _ = sample_request(11, 9)
    rc, out, _ = run(monkeypatch, capsys, frame, "--full")
    doc = json.loads(out)
    assert rc == 0 and doc["groups"] == ["billing"] and doc["body"]["group_id"] == "billing"


def test_decode_response_needs_its_request_key_and_version(monkeypatch, capsys):
    from l7parsers.kafka import parse_request
    from l7parsers.kafka.responses import denied_response
    denial = denied_response(parse_request(sample_request(0, 9, correlation_id=5)[0]))
    rc, out, _ = run(monkeypatch, capsys, denial, "--response", "--api-key", "0", "--api-version", "9", "--full")
    doc = json.loads(out)
    assert rc == 0 and doc["correlation_id"] == 5 and doc["header_version"] == 1
    assert doc["body"]["responses"][0]["partition_responses"][0]["error_code"] == 29
    rc, _, err = run(monkeypatch, capsys, denial, "--response")
    assert rc == 2 and "--api-key" in err


def test_bad_input_exits_2_with_one_line(monkeypatch, capsys):
    frame, _ = sample_request(0, 9)
    for data, argv, words in ((b"zz", ("--hex",), "not hex"), (b"\x00\x00", (), "size prefix"),
                              (frame[:-3], (), "size prefix says"),
                              (frame[:-3] + b"\xff\xff\xff", (), "not a valid Kafka request")):
        rc, out, err = run(monkeypatch, capsys, data, *argv)
        assert rc == 2 and out == "" and words in err and err.count("\n") == 1


def test_cli_help_does_not_import_the_parser():
    code = "import sys; from mesh.cli.main import build_parser; build_parser(); print('l7parsers.kafka' in sys.modules, 'kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
