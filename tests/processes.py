"""`esrec` commands as real processes for the tests: started, watched, scraped, stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from esrec.lifetime import die_with_parent


class EsrecProcess:
    """One long-running `esrec ...` command (restartable), its log in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env, self.log, self.args = env, log, args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EsrecProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "esrec", *self.args],
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)  # a killed run too
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        """SIGTERM; the command must drain and exit 0."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            assert self.process.wait(60) == 0, self.text()[-2000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, line: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.text():
            assert self.alive(), f"`esrec {' '.join(self.args)}` ended:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, self.text()[-3000:]
            time.sleep(0.1)


def get_json(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(status, body) of a JSON endpoint, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def metric(port: int, name: str) -> float | None:
    """A Prometheus sample's value (summed over labels), None if the metric is absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(value) for value in values) if values else None
