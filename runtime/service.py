"""What every long-running esrec process shares: /healthz (ready), /livez (live) and
/metrics over HTTP, signal handling that drains within a time limit, and a garbage
collector set for a service's allocation pattern."""

from __future__ import annotations

import gc
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
# allocations between young-generation collections (CPython's default: 700); the older
# generations are collected every 50 and 100 of the younger ones (default: 10, 10)
GC_THRESHOLDS = (10_000, 50, 100)


def collect_cycles_rarely() -> None:
    """Run the cycle collector less often, and never over what exists at start-up. A
    batch or a request makes thousands of short-lived dicts that reference counting
    frees; at the default thresholds the collector still walked them every 700
    allocations and every live object (the towers, the caches) every 100th time: 20-25 %
    of the indexer's CPU per change (measured per thread in bench.indexer's setting)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
