"""Real servers on 127.0.0.1 for the storage tests, started and stopped by the tests themselves:
an S3-compatible server (moto in server mode, `helpers.s3local`) and an HTTP file server with Range support and
optional fault injection (failed requests, a connection cut in the middle of a body)."""
from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers.s3local import free_port, moto_server  # noqa: F401 - re-exported for tests


@dataclass
class Faults:
    """Every `fail_every`-th GET answers 503; the `cut_request`-th GET sends half its body and
    closes the connection."""

    fail_every: int = 0
    cut_request: int = 0
    requests: int = 0
    failed: int = 0
    cut: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(directory: Path, faults: Faults):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _target(self) -> Path | None:
            path = (directory / self.path.split("?")[0].lstrip("/")).resolve()
            return path if path.is_file() and directory.resolve() in path.parents else None

        def do_HEAD(self) -> None:
            target = self._target()
            if target is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(target.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            with faults.lock:
                faults.requests += 1
                number = faults.requests
            if faults.fail_every and number % faults.fail_every == 0:
                with faults.lock:
                    faults.failed += 1
                self.send_error(503, "injected failure")
                return
            target = self._target()
            if target is None:
                self.send_error(404)
                return
            data = target.read_bytes()
            start, stop = 0, len(data)
            match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                stop = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:stop]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if faults.cut_request and number == faults.cut_request and len(body) > 1:
                with faults.lock:
                    faults.cut += 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """Quiet about clients dropping connections (the point of the fault tests), and able to cut
    every open keep-alive connection when it stops, as a dead server would."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()

    def process_request(self, request, client_address) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        pass

    def cut_all(self) -> None:
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def http_server(directory: Path, faults: Faults | None = None) -> Iterator[tuple[str, Faults]]:
    """Serve `directory` on 127.0.0.1; yields (base URL, the Faults counters)."""
    faults = faults or Faults()
    server = _QuietServer(("127.0.0.1", 0), _handler(directory, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()
        server.cut_all()
