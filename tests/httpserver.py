"""Test harness: a small threaded HTTP server on 127.0.0.1 for certificates, CRLs, AIA caIssuers and OCSP.

Serves a table of path -> (body, content type), logs every request, and can delay or fail chosen paths::

    with HttpServer({"/bob.cer": (bob.der(), "application/pkix-cert")}) as http:
        http.set("/r1.crl", crl_der, "application/pkix-crl")
        http.delay("/slow.cer", 5)        # answer after 5 s (cut short by stop())
        http.status("/gone.cer", 404)     # this status, empty body
        http.unsized("/big.crl")          # no Content-Length: the body ends with the connection
        url = http.url("/bob.cer")        # http://127.0.0.1:PORT/bob.cer
        ...
        assert ("GET", "/bob.cer") in http.requests()

Paths are matched exactly, then without the query string; unknown paths get 404. POST bodies (OCSP requests) are
kept in :attr:`HttpServer.log`. Nothing here starts a process: a thread per request, all stopped by :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from mta import LOOPBACK

__all__ = ["HttpRequest", "HttpServer"]


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # as requested, query string included
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    status: int = 0  # what was (or is being) answered
    at: float = 0.0  # time.monotonic() when the request line was read


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self, send_body: bool) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, content_type, delay = owner._lookup(self.path)
        unsized = self.path.partition("?")[0] in owner._unsized
        owner._record(HttpRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                  status, time.monotonic()))
        if delay > 0 and owner._stopping.wait(delay):
            self.close_connection = True
            return  # stopping: hang up without an answer
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            location = owner._redirects.get(self.path.partition("?")[0])
            if location is not None:
                self.send_header("Location", location)
            if unsized:  # the body ends when the connection does, as an HTTP/1.0-style server would send it
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if send_body:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
            self.close_connection = True

    def setup(self) -> None:
        super().setup()
        self.server.owner._connection(self.connection, open_=True)

    def finish(self) -> None:
        self.server.owner._connection(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_POST(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are recorded in HttpServer.log instead of stderr


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpServer


class HttpServer:
    """A threaded ``http.server`` on 127.0.0.1 or another loopback ``host`` (see the module docstring). The port is
    bound on construction."""

    def __init__(self, routes: Mapping[str, tuple[bytes, str]] | None = None, port: int = 0,
                 host: str = LOOPBACK) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, tuple[bytes, str]] = dict(routes or {})
        self._delays: dict[str, float] = {}
        self._statuses: dict[str, int] = {}
        self._unsized: set[str] = set()
        self._redirects: dict[str, str] = {}
        self.log: list[HttpRequest] = []
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server = _Server((host, port), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------------ content

    def set(self, path: str, body: bytes, content_type: str = "application/pkix-cert") -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        with self._lock:
            self._routes[path] = (body, content_type)
        return self.url(path)

    def remove(self, path: str) -> None:
        """Stop serving ``path`` (404 from now on); its delay and status stay."""
        with self._lock:
            self._routes.pop(path, None)

    def delay(self, path: str, seconds: float) -> None:
        """Answer requests for ``path`` only after ``seconds`` (0: no delay). :meth:`stop` cuts delays short."""
        with self._lock:
            self._delays[path] = seconds

    def status(self, path: str, code: int | None) -> None:
        """Answer requests for ``path`` with ``code`` and an empty body (None: back to normal)."""
        with self._lock:
            if code is None:
                self._statuses.pop(path, None)
            else:
                self._statuses[path] = code

    def redirect(self, path: str, location: str) -> None:
        """Answer ``path`` with 302 Found to ``location``."""
        with self._lock:
            self._redirects[path] = location

    def unsized(self, path: str) -> None:
        """Answer ``path`` without a Content-Length: the body ends when the server closes the connection."""
        with self._lock:
            self._unsized.add(path)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path if path.startswith('/') else '/' + path}"

    def _lookup(self, request_path: str) -> tuple[int, bytes, str, float]:
        """(status, body, content type, delay) for a request path."""
        with self._lock:
            candidates = [request_path, request_path.partition("?")[0]]
            path = next((p for p in candidates
                         if p in self._routes or p in self._statuses or p in self._delays or p in self._redirects),
                        candidates[0])
            delay = self._delays.get(path, 0.0)
            if path in self._redirects:
                return 302, b"", "text/plain", delay
            if path in self._statuses:
                return self._statuses[path], b"", "text/plain", delay
            if path in self._routes:
                body, content_type = self._routes[path]
                return 200, body, content_type, delay
            return 404, b"not found\n", "text/plain", delay

    def _connection(self, conn: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _record(self, request: HttpRequest) -> None:
        with self._lock:
            self.log.append(request)

    # -------------------------------------------------------------------------------------------------- inspection

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, oldest first."""
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    def count(self, path: str, method: str | None = None) -> int:
        """How many requests asked for ``path`` (query string ignored)."""
        with self._lock:
            return sum(1 for r in self.log if r.path.partition("?")[0] == path and method in (None, r.method))

    def clear(self) -> None:
        with self._lock:
            self.log.clear()

    # --------------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> HttpServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"http-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: pending delays end without an answer, kept-alive connections are cut (a client's pooled
        connection must not reach a stopped server), the socket is closed."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        with contextlib.suppress(OSError):
            self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HttpServer(port={self.port}, paths={sorted(self._routes)})"
