"""HTTP servers for the network tests, started on free loopback ports.

``Nginx``, shared with the benchmarks (``benchmarks/_nginx.py``), runs the system nginx binary as a
child process with its own prefix, config and logs. ``FaultServer`` is a small threaded HTTP/1.1
server with byte-range support whose responses a test can break on purpose, per file: fail with a
status, drop the connection mid-body, ignore ``Range``, send a short or long body, stall, or
pretend the file is missing. It records every request it answers.
"""

from __future__ import annotations

import dataclasses
import http.server
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from _nginx import LOOPBACK, Nginx, free_port, nginx_binary  # noqa: E402,F401 - re-exported

# ---------------------------------------------------------------------------------- fault server

FAULT_KINDS = ("fail", "missing", "drop", "short", "long", "stall", "ignore_range", "delay")


@dataclasses.dataclass
class Fault:
    """How to misbehave for one file.

    ``kind``: ``fail`` (answer ``status``, with ``Retry-After: 0``), ``missing`` (404), ``drop``
    (send ``after`` body bytes, then close; only ranges longer than that), ``short`` (declare the
    full Content-Length, send half the body, close), ``long`` (``extra`` bytes beyond the range,
    declared in Content-Length), ``stall`` (send the headers, then nothing for ``seconds`` or until
    the client hangs up; only ranges longer than ``after`` bytes), ``ignore_range`` (200 with the whole file, no Accept-Ranges), ``delay``
    (wait ``seconds`` before answering normally). ``count``: how many requests it applies to (None:
    all). Body faults and ``delay`` apply to GET only.
    """

    kind: str
    count: Optional[int] = None
    status: int = 503
    after: int = 0
    extra: int = 17
    seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}")


@dataclasses.dataclass
class Hit:
    """One request as the fault server saw and answered it."""

    method: str
    range: Optional[str]  # the Range header as sent
    start: Optional[int]  # the requested range, inclusive, when it parsed
    end: Optional[int]
    client: Tuple[str, int]  # the connection (one port per connection)
    status: int = 0
    sent: int = 0  # body bytes written
    fault: Optional[str] = None
    resumed: bool = False  # over TLS: the connection resumed an earlier session (no full handshake)


class _File:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fault: Optional[Fault] = None
        self.left: Optional[int] = None
        self.hits: List[Hit] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def claim(self, method: str, length: int) -> Optional[Fault]:
        """The fault to apply to this request, counting it against ``count``."""
        fault = self.fault
        if fault is None or self.left == 0:
            return None
        body_fault = fault.kind not in ("fail", "missing")
        if body_fault and method != "GET":
            return None
        if fault.kind in ("drop", "stall") and length <= fault.after:
            return None
        if self.left is not None:
            self.left -= 1
        return fault


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    """Inclusive (start, end) of a single byte range, or None when it cannot be satisfied."""
    match = _RANGE.match(header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        count = int(last)
        return (max(size - count, 0), size - 1) if count and size else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 20  # an idle kept-alive connection is closed after this many seconds
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, with_body: bool) -> None:
        owner = self.server.owner
        name = urlsplit(self.path).path.lstrip("/")
        header = self.headers.get("Range")
        with owner.lock:
            entry = owner.files.get(name)
            size = len(entry.data) if entry else 0
            wanted = parse_range(header, size) if header is not None else None
            hit = Hit(self.command, header, *(wanted or (None, None)), client=self.client_address,
                      resumed=bool(getattr(self.connection, "session_reused", False)))
            fault = None
            if entry is not None:
                length = wanted[1] - wanted[0] + 1 if wanted else size
                fault = entry.claim(self.command, length)
                hit.fault = fault.kind if fault else None
                entry.hits.append(hit)
                entry.in_flight += 1
                entry.max_in_flight = max(entry.max_in_flight, entry.in_flight)
        try:
            self._respond(entry, fault, header, wanted, hit, with_body)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            if entry is not None:
                with owner.lock:
                    entry.in_flight -= 1

    def _respond(self, entry, fault, header, wanted, hit, with_body) -> None:
        kind = fault.kind if fault else None
        if entry is None or kind == "missing":
            return self._reply_status(hit, 404)
        if kind == "fail":
            return self._reply_status(hit, fault.status, {"Retry-After": "0"})
        if kind == "delay":
            self.server.stopping.wait(fault.seconds)
        data, size = entry.data, len(entry.data)
        if kind == "ignore_range" or header is None:
            status, start, end = 200, 0, size - 1
        elif wanted is None:
            return self._reply_status(hit, 416, {"Content-Range": f"bytes */{size}"})
        else:
            status, (start, end) = 206, wanted
        body = memoryview(data)[start:end + 1]
        if kind == "long":
            body = memoryview(bytes(body) + b"\xa5" * fault.extra)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if kind != "ignore_range":
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        hit.status = status
        if not with_body:
            return
        if kind == "stall":
            self.wfile.flush()
            self._stall(fault.seconds)
            return self._hang_up()
        limit = len(body)
        if kind == "drop":
            limit = fault.after
        elif kind == "short":
            limit = len(body) // 2
        self._write(body[:limit], hit)
        if limit < len(body):
            self._hang_up()

    def _reply_status(self, hit: Hit, status: int, headers: Optional[Dict[str, str]] = None) -> None:
        text = f"{status} {http.server.BaseHTTPRequestHandler.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        hit.status = status
        if self.command != "HEAD":
            self.wfile.write(text)

    def _write(self, body: memoryview, hit: Hit) -> None:
        step = 1 << 16
        for pos in range(0, len(body), step):
            self.wfile.write(body[pos:pos + step])
            hit.sent += len(body[pos:pos + step])

    def _stall(self, seconds: float) -> None:
        """Sends nothing for ``seconds``, returning early when the client hangs up or at shutdown."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return  # the client closed the connection
            except OSError:
                return
            time.sleep(0.05)  # it sent something (not expected): keep waiting, without spinning

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many parallel range requests connect at once

    def handle_error(self, request, client_address) -> None:
        self.owner.errors.append(repr(sys.exc_info()[1]))


class FaultServer:
    """A threaded HTTP/1.1 file server on a free loopback port whose answers tests can break."""

    def __init__(self, tls: Optional["ssl.SSLContext"] = None) -> None:
        self.lock = threading.Lock()
        self.files: Dict[str, _File] = {}
        self.errors: List[str] = []
        self._server = _Server((LOOPBACK, 0), _Handler)
        if tls is not None:  # HTTPS: every accepted connection does a TLS handshake first
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._server.owner = self
        self._server.stopping = threading.Event()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-http", daemon=True
        )
        self._thread.start()

    def url(self, name: str) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}/{name}"

    def put(self, name: str, data: bytes) -> str:
        """Serves ``data`` as ``/name`` (no fault, empty log); returns its URL."""
        with self.lock:
            self.files[name] = _File(bytes(data))
        return self.url(name)

    def fault(self, name: str, kind: Optional[str] = None, **params) -> None:
        """Sets (or with no kind, clears) the fault of a file; see :class:`Fault`."""
        with self.lock:
            entry = self.files[name]
            entry.fault = Fault(kind, **params) if kind else None
            entry.left = entry.fault.count if entry.fault else None

    def hits(self, name: str) -> List[Hit]:
        with self.lock:
            return list(self.files[name].hits)

    def forget(self, name: str) -> None:
        """Clears a file's request log and in-flight maximum."""
        with self.lock:
            self.files[name].hits.clear()
            self.files[name].max_in_flight = 0

    def max_in_flight(self, name: str) -> int:
        with self.lock:
            return self.files[name].max_in_flight

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.errors.clear()

    def close(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def self_signed_certificate(base: Path) -> Optional[Tuple[Path, Path, Path]]:
    """A certificate for LOOPBACK made with the openssl command in ``base``: (cert, key, a hashed
    CA directory holding it); None when openssl is not installed."""
    if shutil.which("openssl") is None:
        return None
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}"],
        check=True, capture_output=True,
    )
    cadir = base / "cadir"
    cadir.mkdir()
    shutil.copy(cert, cadir / "test-ca.pem")
    subprocess.run(["openssl", "rehash", str(cadir)], check=True, capture_output=True)
    return cert, key, cadir
