"""A small threaded HTTP server on 127.0.0.1 for the download and link tests: nothing in the
tests reaches the network.

Each served path is a :class:`Resource` whose answers can be bent: Range requests honoured
(``206``) or ignored (``200``), a transfer cut off after so many bytes, no Content-Length,
HEAD refused, a fixed status (404, 500, ...), pauses between pieces and a callback in the
middle of a transfer. Every request is logged as ``(method, path, Range header)``.

    with LocalServer() as server:
        url = server.serve("/file.bin", body, cut_at=8000)
"""
from __future__ import annotations

import collections
import http.server
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self


@dataclass
class Resource:
    """How one path answers.

    ``ranges``: honour ``Range: bytes=N-`` and ``bytes=N-M`` with ``206`` (else answer ``200`` with the whole body).
    ``cut_at``: stop sending once the body's byte ``cut_at`` is reached (absolute offset), then
    close the connection. ``length``: send Content-Length. ``head``: answer HEAD (else ``405``).
    ``status``: a status other than 200 answers with that error and no body. ``pieces`` and
    ``pause`` (s): send in pieces with a pause after each; ``midway`` is called after the first.
    """

    body: bytes
    ranges: bool = True
    cut_at: int | None = None
    length: bool = True
    head: bool = True
    status: int = 200
    pieces: int = 1
    pause: float = 0.0
    midway: Callable[[], None] | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers GET and HEAD from the server's resources; 404 for unknown paths."""

    def _resource(self) -> Resource | None:
        self.server.log.append((self.command, self.path, self.headers.get("Range")))
        resource = self.server.resources.get(self.path)
        if resource is None:
            self.send_error(404)
        elif resource.status != 200:
            self.send_error(resource.status)
        else:
            return resource
        return None

    def _start(self, resource: Resource) -> tuple[int, int]:
        """Send the status line and headers; the body's byte span ``[start, end)`` (start -1: none)."""
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        size = len(resource.body)
        ranged = bool(match) and resource.ranges
        start = int(match[1]) if ranged else 0
        end = min(int(match[2]) + 1, size) if ranged and match[2] else size
        if ranged and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return -1, -1
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes" if resource.ranges else "none")
        if resource.length:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        return start, end

    def do_HEAD(self) -> None:
        resource = self._resource()
        if resource is None:
            return
        if not resource.head:
            self.send_error(405)
            return
        self._start(resource)

    def do_GET(self) -> None:
        resource = self._resource()
        if resource is None:
            return
        start, end = self._start(resource)
        if start < 0:
            return
        if resource.cut_at is not None:
            end = max(start, min(resource.cut_at, end))
        step = max(1, -(-(end - start) // resource.pieces))
        for i, offset in enumerate(range(start, end, step)):
            self.wfile.write(resource.body[offset:min(offset + step, end)])
            self.wfile.flush()
            if i == 0 and resource.midway is not None:
                resource.midway()
            time.sleep(resource.pause)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up mid-transfer (the resume tests do it on purpose) is not an error
    worth a traceback in the test output; any other error still prints one."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 (a free port) for use in a ``with`` block.

    ``url`` is its base URL; :meth:`serve` adds a path; ``log`` lists the requests and
    :meth:`hits` counts the requests for a path.
    """

    def __init__(self) -> None:
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.resources: dict[str, Resource] = {}
        self.httpd.log: list[tuple[str, str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def log(self) -> list[tuple[str, str, str | None]]:
        return self.httpd.log

    def serve(self, path: str, body: bytes = b"", **options) -> str:
        """Serve ``body`` at ``path`` (``options`` as in :class:`Resource`); returns its URL."""
        self.httpd.resources[path] = Resource(body, **options)
        return self.url + path

    def hits(self, path: str, method: str = "GET") -> int:
        """How many ``method`` requests ``path`` received."""
        return collections.Counter((m, p) for m, p, _ in self.log)[(method, path)]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
