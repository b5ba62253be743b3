"""What every long-running esrec process shares: /healthz and /metrics over HTTP, and
signal handling that drains within a time limit."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("esrec")


def serve_http(port: int, registry: CollectorRegistry,
               health: Callable[[], tuple[bool, dict[str, object]]]) -> ThreadingHTTPServer:
    """/healthz (JSON, 503 when stalled) and /metrics (Prometheus) on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok, detail = health()
                body, status, kind = json.dumps(detail).encode(), 200 if ok else 503, \
                    "application/json"
            else:
                body, status, kind = b"not found", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="esrec-http").start()
    return server


def install_signal_handlers(stop: threading.Event, timeout_s: float) -> None:
    """First signal: drain and stop. No exit within ``timeout_s``: exit hard (code 2)."""

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        log.info("stopping: draining the current batch",
                 extra={"signal": signal.Signals(signum).name, "timeout_s": timeout_s})
        stop.set()

        def watchdog() -> None:
            time.sleep(timeout_s)
            log.error("shutdown timed out; exiting without a final drain",
                      extra={"at": datetime.now(UTC).isoformat()})
            os._exit(2)

        threading.Thread(target=watchdog, daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
