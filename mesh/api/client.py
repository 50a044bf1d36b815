"""The CLI's client for the agent API: HTTP/1.1 over the agent's unix socket, stdlib only (fast start).

Errors come back as `{"error": {"type": "ValidationError", "message": "...", ...}}` and are raised as the
matching OstiumError subclass, so the CLI prints the agent's message and exits with the class's code.

One request per connection (`Connection: close`). Plain requests are written and read here on the socket:
http.client pulls in the email package (~35 ms of import, a third of a short CLI command's run); only
`stream` (long-running commands) uses it.
"""

from __future__ import annotations

import json
import socket

from mesh import errors

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (they are strings): importing typing costs a CLI start ~5 ms
    from typing import Any, Iterator

DEFAULT_SOCKET = "/var/run/ostium/ostium.sock"
_MAX_HEAD = 64 * 1024


def _unix_http_connection(path: str, timeout: float | None):
    import http.client

    class _UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(path)
            self.sock = sock

    return _UnixHTTPConnection("localhost", timeout=timeout)


def _query(path: str, params: dict | None) -> str:
    if not params:
        return path
    import urllib.parse

    return path + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)


def _dechunk(data: bytes) -> bytes:
    """A chunked transfer-coded body (RFC 9112 7.1), whole; trailers are ignored."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("truncated chunked body")
        size = int(data[pos:eol].split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        start = eol + 2
        if start + size > len(data):
            raise ValueError("truncated chunked body")
        out += data[start:start + size]
        pos = start + size + 2


def _exchange(sock: socket.socket, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
    """Send one request, read the whole response: (status, body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    if data is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    sock.sendall(head.encode("ascii") + b"\r\n" + (data or b""))
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk or len(buf) > _MAX_HEAD:
            raise ValueError("incomplete response head")
        buf += chunk
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray(buf[end + 4:])
    length = headers.get("content-length")
    if length is not None and "chunked" not in headers.get("transfer-encoding", ""):
        want = int(length)
        while len(body) < want:
            chunk = sock.recv(max(65536, want - len(body)))
            if not chunk:
                raise ValueError("truncated response body")
            body += chunk
        return status, bytes(body[:want])
    while chunk := sock.recv(65536):  # chunked or close-delimited: the server closes after it
        body += chunk
    if "chunked" in headers.get("transfer-encoding", ""):
        return status, _dechunk(bytes(body))
    return status, bytes(body)


def raise_from_payload(status: int, payload: Any) -> None:
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        raise errors.AgentError(f"agent answered HTTP {status} without an error body")
    cls = getattr(errors, str(err.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.OstiumError)):
        cls = errors.OstiumError
    message = str(err.get("message", "unknown error"))
    # The agent already rendered path and document into the message.
    raise cls(message)


class APIClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float | None = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        path = _query(path, params)
        data = json.dumps(body).encode() if body is not None else None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise errors.AgentError(
                    f"cannot reach the agent at {self.socket_path}: is `ostium agent` running? "
                    "(start it, or pass --socket / set OSTIUM_SOCKET)") from None
            except PermissionError:
                raise errors.AgentError(f"permission denied on {self.socket_path}: run as root") from None
            status, raw = _exchange(sock, method, path, data)
        except OSError as exc:
            raise errors.AgentError(f"agent API at {self.socket_path} failed: {exc}") from None
        except ValueError as exc:
            raise errors.AgentError(f"agent API at {self.socket_path} answered badly: {exc}") from None
        finally:
            sock.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise errors.AgentError(f"agent answered HTTP {status} with a non-JSON body") from None
        if status >= 400:
            raise_from_payload(status, payload)
        return payload

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json_body: Any = None) -> Any:
        return self.request("POST", path, body=json_body if json_body is not None else {})

    def delete(self, path: str, json_body: Any = None) -> Any:
        return self.request("DELETE", path, body=json_body)

    def stream(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """Yield JSON-lines records until the agent closes the stream."""
        path = _query(path, params)
        conn = _unix_http_connection(self.socket_path, None)
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except (FileNotFoundError, ConnectionRefusedError):
                raise errors.AgentError(f"cannot reach the agent at {self.socket_path}: is `ostium agent` running?") from None
            if resp.status >= 400:
                raw = resp.read()
                raise_from_payload(resp.status, json.loads(raw) if raw else None)
            while True:
                line = resp.readline()
                if not line:
                    return
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            conn.close()
