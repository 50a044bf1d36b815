"""The deathstar: a tiny HTTP service (stdlib only) answering like Cilium's demo deathstar."""

from __future__ import annotations

import argparse
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Deathstar(BaseHTTPRequestHandler):
    server_version = "deathstar/1.0"
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries many requests

    def _answer(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/v1":
            self._answer(200, "{'name': 'Death Star', 'host': '%s'}\n" % socket.gethostname())
        else:
            self._answer(404, "Not found\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/v1/request-landing":
            self._answer(200, "Ship landed\n")
        else:
            self._answer(404, "Not found\n")

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/v1/exhaust-port":
            self._answer(503, "Panic: deathstar exploded\n")
        else:
            self._answer(404, "Not found\n")

    def log_message(self, fmt: str, *args) -> None:  # quiet: the mesh's flows are the log
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args()
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer(("0.0.0.0", args.port), Deathstar).serve_forever()


if __name__ == "__main__":
    main()
