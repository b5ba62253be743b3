"""The demo's long-running parts as real `esrec` processes, and where they find servers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from esrec.lifetime import die_with_parent
from esrec.settings import Settings, server_environment

STOP_TIMEOUT_S = 60.0


def environment(settings: Settings, metrics_port: int, events_port: int) -> dict[str, str]:
    """This process's environment (credentials included) aimed at ``settings``' servers
    and names, with the demo's gates, for `esrec` subprocesses."""
    rollout = settings.rollout
    return {**os.environ, **server_environment(settings),
            "ESREC_INDEXER__METRICS_PORT": str(metrics_port),
            "ESREC_RECALL__EVENTS_METRICS_PORT": str(events_port),
            "ESREC_ROLLOUT__MAX_P99_MS": str(rollout.max_p99_ms),
            "ESREC_ROLLOUT__ANN_QUERIES": str(rollout.ann_queries)}


def esrec(env: dict[str, str], *args: str,
          timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one `esrec` command to completion, capturing its output."""
    return subprocess.run([sys.executable, "-m", "esrec", *args], env=env, text=True,
                          capture_output=True, timeout=timeout_s)


class Background:
    """An `esrec` command running until stopped (SIGTERM, then it must exit 0)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.args = args
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "esrec", *args], env=env,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)

    def wait_for(self, line: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`esrec {' '.join(self.args)}` did not log {line!r}; "
                                   f"see {self.log}")
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def scrape_counter(port: int, name: str) -> float:
    """Sum of a Prometheus counter over its labels, from an /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))
