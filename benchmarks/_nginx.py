"""nginx on free loopback ports, for the HTTP benchmark and the HTTP tests (stdlib only).

``Nginx`` runs the system nginx binary as a child process with its own prefix, config and logs
(nothing under /etc/nginx is read, nothing but its loopback ports is bound). It serves one folder
from a plain server block and, when asked, from a second block whose responses are throttled with
``limit_rate`` (a capped link, like an object store's per-stream limit).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


_CONF = """\
daemon off;
{user}master_process {master};
worker_processes {workers};
pid "{work}/nginx.pid";
error_log "{work}/error.log" warn;
events {{ worker_connections 1024; }}
http {{
    {log_format}access_log {access_log};
    client_body_temp_path "{work}/temp/body";
    proxy_temp_path "{work}/temp/proxy";
    fastcgi_temp_path "{work}/temp/fastcgi";
    uwsgi_temp_path "{work}/temp/uwsgi";
    scgi_temp_path "{work}/temp/scgi";
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
{servers}}}
"""

_SERVER = """\
    server {{
        listen {host}:{port};
        server_name localhost;
        root "{root}";
{extra}        location / {{ }}
    }}
"""


def nginx_binary() -> Optional[str]:
    """Path of an executable nginx, or None."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Nginx:
    """nginx serving ``root`` on free loopback ports; ``stop()`` ends it.

    ``limit_rate``: bytes per second; adds a second server block, on ``capped_port``, whose every
    response is sent at most that fast (nginx applies ``limit_rate`` per request; the first 5 ms
    worth of each goes out at once). ``workers``: nginx worker processes (1: a single process, no
    master). ``access_log``: False writes none (long benchmarks).
    """

    def __init__(self, binary: str, root: Path, work: Path, limit_rate: Optional[int] = None,
                 workers: int = 1, access_log: bool = True, log_connections: bool = False) -> None:
        self.binary, self.root, self.work = binary, Path(root), Path(work)
        self.limit_rate, self.workers, self.log_requests = limit_rate, workers, access_log
        self.log_connections = log_connections  # each log line: connection number, status, bytes, URI
        self.port = 0
        self.capped_port = 0
        self._proc: Optional[subprocess.Popen] = None
        for sub in ("temp", "temp/body", "temp/proxy", "temp/fastcgi", "temp/uwsgi", "temp/scgi"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def connections_and_requests(self, offset: int = 0) -> tuple[int, int]:
        """Distinct connections and requests in the access log after byte ``offset`` (needs
        ``log_connections``)."""
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return len({line.split()[0] for line in lines if line.strip()}), len(lines)

    def url(self, name: str, capped: bool = False) -> str:
        if capped and not self.capped_port:
            raise ValueError("this nginx has no capped server (no limit_rate given)")
        return f"http://{LOOPBACK}:{self.capped_port if capped else self.port}/{name}"

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def _config(self) -> str:
        server = dict(host=LOOPBACK, root=self.root)
        servers = _SERVER.format(port=self.port, extra="", **server)
        if self.limit_rate:
            # nginx sends a chunk, then waits (chunk / rate) in whole milliseconds before the next.
            # Chunks of 5 ms at the rate make that wait exact and keep the unthrottled first chunk
            # of each response small, so ranges of a few MiB are held to the rate too.
            rate = int(self.limit_rate)
            chunk = max(rate // 200, 16 << 10)
            throttle = f"        limit_rate {rate};\n        sendfile_max_chunk {chunk};\n"
            servers += _SERVER.format(port=self.capped_port, extra=throttle, **server)
        log = f'"{self.access_log}"' if self.log_requests else "off"
        log_format = ""
        if self.log_requests and self.log_connections:
            log_format = "log_format conn '$connection $status $body_bytes_sent $uri';\n    "
            log += " conn"
        # Worker processes of a master started as root would run as 'nobody', which may not be
        # allowed to read a private folder: they keep the master's user instead.
        user = "user root;\n" if self.workers > 1 and os.geteuid() == 0 else ""
        return _CONF.format(work=self.work, user=user, master="on" if self.workers > 1 else "off",
                            workers=self.workers, access_log=log, log_format=log_format, servers=servers)

    def start(self, tries: int = 3, timeout: float = 10.0) -> None:
        """Starts nginx; other ports are tried when a chosen one was taken in the meantime."""
        problem = ""
        for _ in range(tries):
            self.port = free_port()
            self.capped_port = free_port() if self.limit_rate else 0
            while self.capped_port == self.port:
                self.capped_port = free_port()
            conf = self.work / "nginx.conf"
            conf.write_text(self._config())
            log = open(self.work / "stderr.log", "wb")
            self._proc = subprocess.Popen(
                [self.binary, "-p", f"{self.work}/", "-c", str(conf), "-e", str(self.work / "error.log")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            problem = self._wait_ready(timeout)
            if not problem:
                return
            self.stop()
            if "in use" not in problem:
                break
        raise RuntimeError(f"nginx did not start: {problem}")

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.capped_port) if p]
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._logs() or f"exited with status {self._proc.returncode}"
            if all(port_answers(p) for p in ports):
                return ""
            time.sleep(0.02)
        return f"ports {ports} did not answer within {timeout:.0f} s; {self._logs()}"

    def _logs(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.work / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text.strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # with a master, SIGTERM is a fast shutdown of the workers too
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
