"""What every long-running esrec process shares: /healthz (ready), /livez (live) and
/metrics over HTTP, and signal handling that drains within a time limit."""

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

from runtime.health import Health

log = logging.getLogger("esrec")


def serve_http(host: str, port: int, registry: CollectorRegistry,
               health: Health) -> ThreadingHTTPServer:
    """/healthz and /livez (JSON, 503 when not ready / not live) and /metrics (Prometheus)
    on a daemon thread."""
    probes: dict[str, Callable[[], tuple[bool, dict[str, object]]]] = {
        "/healthz": health.ready, "/livez": health.live}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path in probes:
                ok, detail = probes[self.path]()
                body, status, kind = json.dumps(detail, default=str).encode(), \
                    200 if ok else 503, "application/json"
            else:
                body, status, kind = b"not found", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line
            return

    server = ThreadingHTTPServer((host, port), Handler)
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
