"""The CLI's client for the agent API: HTTP/1.1 over the agent's unix socket, stdlib only (fast start).

Errors come back as `{"error": {"type": "ValidationError", "message": "...", ...}}` and are raised as the
matching OstiumError subclass, so the CLI prints the agent's message and exits with the class's code.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any, Iterator

from mesh import errors

DEFAULT_SOCKET = "/var/run/ostium/ostium.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


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

    def _conn(self, timeout: float | None = None) -> _UnixHTTPConnection:
        return _UnixHTTPConnection(self.socket_path, self.timeout if timeout is None else timeout)

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        if params:
            path = path + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None},
                                                       doseq=True)
        conn = self._conn()
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise errors.AgentError(
                f"cannot reach the agent at {self.socket_path}: is `ostium agent` running? "
                "(start it, or pass --socket / set OSTIUM_SOCKET)") from None
        except PermissionError:
            raise errors.AgentError(f"permission denied on {self.socket_path}: run as root") from None
        except OSError as exc:
            raise errors.AgentError(f"agent API at {self.socket_path} failed: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise errors.AgentError(f"agent answered HTTP {resp.status} with a non-JSON body") from None
        if resp.status >= 400:
            raise_from_payload(resp.status, payload)
        return payload

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json_body: Any = None) -> Any:
        return self.request("POST", path, body=json_body if json_body is not None else {})

    def delete(self, path: str, json_body: Any = None) -> Any:
        return self.request("DELETE", path, body=json_body)

    def stream(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """Yield JSON-lines records until the agent closes the stream."""
        if params:
            path = path + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None},
                                                       doseq=True)
        conn = self._conn(timeout=None)
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
