"""A hostile HTTP server for the wire tests: raw sockets on loopback, one behaviour per path.

``WireServer`` answers each path as ``route(path, mode, **params)`` says, and records every
connection and request that reaches it, so that a test can prove what was (and was not) sent.
Modes:

- ``file``: ``data`` with byte ranges (206); ``totals`` (a list) overrides the total that
  successive replies claim in Content-Range (a text such as ``"-1"`` or ``"*"`` included).
- ``redirect``: ``status`` (302) with ``Location: location``.
- ``loop``: a redirect to the same path, for ever (each reply counts).
- ``trickle``: a 206 status line and headers sent one byte every 0.5 s, never ending.
- ``endless_error``: ``status`` (404) and a body that never ends; ``sent`` counts its bytes.
- ``stall_headers``: the first ``count`` requests get half a header, then silence until the client
  hangs up; later ones are served as ``file``.
- ``s3_moved``: ``status`` (301 or 307), an ``x-amz-bucket-region`` header, an S3 error body with
  ``Endpoint`` and, when given, a ``Location``.

A second server with no routes records what would reach another host (every request there is a
leak). Everything stops at ``close()``; loops end when the client does or at shutdown.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import threading
import time
from typing import Dict, List, Optional

from _http_servers import LOOPBACK, parse_range

_HEADER_CAP = 64 << 10


@dataclasses.dataclass
class Request:
    method: str
    target: str  # the request target exactly as sent (dot segments and all)
    headers: Dict[str, str]  # lower-case names


class WireServer:
    """A threaded raw-socket HTTP/1.1 server on a free loopback port (HTTPS with ``tls``)."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.routes: Dict[str, dict] = {}
        self.requests: List[Request] = []
        self.connections = 0
        self.sent = 0  # body bytes of endless replies
        self._tls = tls
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.scheme = "https" if tls else "http"
        self._threads: List[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="wire-accept", daemon=True)
        self._accepter.start()

    @property
    def base(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, mode: str, **params) -> str:
        with self._lock:
            self.routes[path] = {"mode": mode, "hits": 0, **params}
        return self.url(path)

    def hits(self, path: str) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.target.split("?")[0] == path]

    def reset(self) -> None:
        with self._lock:
            self.routes.clear()
            self.requests.clear()
            self.connections = 0
            self.sent = 0

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)
        self._listener.close()

    # -------------------------------------------------------------------------------- serving

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._connection, args=(conn,), name="wire-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn.settimeout(5)
                conn = self._tls.wrap_socket(conn, server_side=True)
            conn.settimeout(0.05)
            buf = b""
            while not self._stop.is_set():
                head, buf = self._read_head(conn, buf)
                if head is None or not self._serve(conn, head):
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _read_head(self, conn: socket.socket, buf: bytes):
        while b"\r\n\r\n" not in buf:
            if self._stop.is_set() or len(buf) > _HEADER_CAP:
                return None, b""
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None, b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head.decode("latin-1"), rest

    def _serve(self, conn: socket.socket, head: str) -> bool:
        """Answers one request; False when the connection must close."""
        line, *fields = head.split("\r\n")
        method, target, _ = (line.split(" ", 2) + ["", ""])[:3]
        headers = {}
        for f in fields:
            name, _, value = f.partition(":")
            headers[name.strip().lower()] = value.strip()
        with self._lock:
            self.requests.append(Request(method, target, headers))
            route = self.routes.get(target.split("?")[0])
            if route is not None:
                route["hits"] += 1
        if route is None:
            return self._reply(conn, 404, {}, b"no such path\n")
        return getattr(self, "_mode_" + route["mode"])(conn, route, headers)

    def _reply(self, conn, status: int, headers: Dict[str, str], body: bytes) -> bool:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return True

    def _wait_for_hangup(self, conn, seconds: float = 3600) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                if conn.recv(1) == b"":
                    return
            except socket.timeout:
                continue

    # ------------------------------------------------------------------------------------ modes

    def _mode_file(self, conn, route, headers) -> bool:
        data = route["data"]
        wanted = parse_range(headers.get("range", ""), len(data))
        if wanted is None:
            return self._reply(conn, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
        totals = route.get("totals") or [len(data)]
        total = totals[min(route["hits"], len(totals)) - 1]
        start, end = wanted
        return self._reply(conn, 206, {"Content-Range": f"bytes {start}-{end}/{total}"}, data[start : end + 1])

    def _mode_redirect(self, conn, route, headers) -> bool:
        return self._reply(conn, route.get("status", 302), {"Location": route["location"]}, b"moved\n")

    def _mode_loop(self, conn, route, headers) -> bool:
        path = [p for p, r in self.routes.items() if r is route][0]
        return self._reply(conn, 302, {"Location": f"{path}?hop={route['hits']}"}, b"")

    def _mode_trickle(self, conn, route, headers) -> bool:
        for byte in b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\nX-Slow: " + b"a" * 10**6:
            if self._stop.wait(0.5):
                return False
            conn.sendall(bytes([byte]))
        return False

    def _mode_endless_error(self, conn, route, headers) -> bool:
        conn.sendall(f"HTTP/1.1 {route.get('status', 404)} X\r\nContent-Length: 1000000000000\r\n\r\n".encode())
        chunk = b"<Error><Code>NoSuchKey</Code>" + b"x" * 65000
        while not self._stop.is_set():
            conn.sendall(chunk)
            with self._lock:
                self.sent += len(chunk)
        return False

    def _mode_stall_headers(self, conn, route, headers) -> bool:
        if route["hits"] > route.get("count", 1):
            return self._mode_file(conn, route, headers)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Ty")
        self._wait_for_hangup(conn)
        return False

    def _mode_stall_later(self, conn, route, headers) -> bool:
        """The first ``served`` requests as ``file``; later ones get headers, then nothing."""
        if route["hits"] <= route.get("served", 1):
            return self._mode_file(conn, route, headers)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/100000\r\n\r\n")
        self._wait_for_hangup(conn)
        return False

    def _mode_s3_moved(self, conn, route, headers) -> bool:
        body = (
            "<?xml version=\"1.0\"?><Error><Code>PermanentRedirect</Code><Message>use the endpoint</Message>"
            f"<Endpoint>{route['endpoint']}</Endpoint><Bucket>b</Bucket></Error>"
        ).encode()
        extra = {"x-amz-bucket-region": route["region"], "Content-Type": "application/xml"}
        if route.get("location"):
            extra["Location"] = route["location"]
        return self._reply(conn, route.get("status", 301), extra, body)


# ------------------------------------------------------------------------------------ resources


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))
