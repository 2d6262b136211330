"""A download server for tests: HTTP on 127.0.0.1 only, in a thread, serving bytes from memory
with the faults a real server has (a connection that stops mid-file, an HTML page, 404, a drip
of one byte at a time), and
standing in for every download host through gradood's test-only mirror variable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from gradood.downloads import MIRROR_VARIABLE

__all__ = ["Served", "local_server"]

# before any test forbids connections (gradood.testing.forbid_downloads): the server's own
_CONNECT, _CREATE_CONNECTION = socket.socket.connect, socket.create_connection
_LIFETIME_S = 120  # the server stops itself after this, whatever the test does


@dataclass
class Served:
    """What the server serves, by URL (as published; the server sees ``/host/path``)."""

    files: dict[str, bytes] = field(default_factory=dict)
    #: URL -> pages answered as HTML (Content-Type text/html) instead of the file
    html: set[str] = field(default_factory=set)
    #: URL -> the number of bytes after which the next answers stop (one entry per answer)
    stops: dict[str, list[int]] = field(default_factory=dict)
    #: URL -> seconds between the bytes of its body, sent one at a time (a slow link)
    drips: dict[str, float] = field(default_factory=dict)
    #: (URL, Range header or None) of every GET
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    etag: str = '"v1"'

    def add(self, url: str, content: bytes) -> str:
        self.files[url] = content
        return url


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    def published(path: str) -> str | None:
        """The published URL that the mirror path ``/host/path`` stands for."""
        return next((url for url in {*served.files, *served.html} if _path(url) == path), None)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            url = published(self.path)
            if url is None or url not in served.files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served.files[url])))
            self.end_headers()

        def do_GET(self) -> None:
            url = published(self.path)
            served.requests.append((url, self.headers.get("Range")))
            if url in served.html:
                self._answer(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html")
                return
            if url is None:
                self.send_error(404, "Not Found")
                return
            content, start = served.files[url], self._range_start()
            if start is None:
                self._answer(200, content, "application/octet-stream", url)
            elif start >= len(content):
                self.send_error(416)
            else:
                extra = {"Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}"}
                self._answer(206, content[start:], "application/octet-stream", url, extra)

        def _range_start(self) -> int | None:
            value = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if not value or (if_range is not None and if_range != served.etag):
                return None
            return int(value.removeprefix("bytes=").split("-")[0])

        def _answer(self, status, body, kind, url=None, extra=None) -> None:
            stops = served.stops.get(url) if url else None
            stop = stops.pop(0) if stops else None
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", served.etag)
            self.send_header("Accept-Ranges", "bytes")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            body = body if stop is None else body[:stop]
            if url in served.drips:
                self._drip(body, served.drips[url])
            else:
                self.wfile.write(body)
            if stop is not None:
                self.close_connection = True

        def _drip(self, body: bytes, seconds: float) -> None:
            """One byte, then a pause, ... until the client stops reading."""
            self.close_connection = True
            try:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(seconds)
            except OSError:  # the client gave up
                pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that stops reading (an HTML page refused) is part of the tests


@contextmanager
def local_server(served: Served, monkeypatch) -> Iterator[str]:
    """Serve ``served`` on 127.0.0.1 (a free port) and point gradood's downloads at it; yields
    the mirror's base URL. The server stops at the end of the block, or after two minutes."""
    monkeypatch.setattr(socket.socket, "connect", _CONNECT)  # loopback only: the mirror's check
    monkeypatch.setattr(socket, "create_connection", _CREATE_CONNECTION)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    server = _QuietServer(("127.0.0.1", 0), _handler(served))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    timer = threading.Timer(_LIFETIME_S, server.shutdown)
    thread.start()
    timer.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(MIRROR_VARIABLE, base)
    try:
        yield base
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"/{parts.netloc}{parts.path}"
