"""A stand-in for the pager: an Alertmanager webhook receiver that keeps what it gets.

Every POST (any path: ``/page``, ``/ticket``) is kept as one notification
``{"path": ..., "received_at": ..., "body": <Alertmanager's JSON>}``, printed as a
JSON line on stdout, and listed by ``GET /notifications``. ``GET /health`` answers
``ok``. Standard library only, so it runs in any Python 3.11 image.

    python pager_stub.py --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 4 * 1024 * 1024


class Inbox:
    """The notifications received so far (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def add(self, item: dict[str, Any]) -> None:
        with self.lock:
            self.items.append(item)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.items)


def make_handler(inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``inbox``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, {"error": "body too large"})
                return
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                self._answer(400, {"error": "not JSON"})
                return
            item = {"path": self.path, "received_at": time.time(), "body": body}
            inbox.add(item)
            print(json.dumps(item, sort_keys=True), flush=True)
            self._answer(200, {"status": "ok"})

        def do_GET(self) -> None:
            if self.path == "/notifications":
                self._answer(200, inbox.all())
            elif self.path == "/health":
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": "not found"})

        def _answer(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one JSON line per notification is the log

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Inbox()))

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"pager stub listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
