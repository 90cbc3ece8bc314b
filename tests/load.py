"""Bounded load from wrk against loopback, and what it reports (requests, errors, latency)."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int  # wrk counts non-2xx/3xx responses
    socket_errors: int  # connect + read + write + timeout
    p50_ms: float
    p99_ms: float
    req_per_s: float
    text: str

    @property
    def failures(self) -> int:
        return self.non_2xx + self.socket_errors


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(text: str) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in", text)[1])
    non_2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors = sum(int(g) for g in m.groups())
    latency = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])
    return WrkResult(requests, non_2xx, errors, latency.get("50", 0.0), latency.get("99", 0.0),
                     rate, text)


def start_wrk(wrk: str, port: int, path: str, seconds: int, connections: int,
              body: bytes | None = None) -> subprocess.Popen:
    """wrk -t1 for ``seconds`` against 127.0.0.1:port; finish with ``finish(proc)``. With
    ``body``, every request is a POST of it (form-encoded)."""
    script = []
    if body is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write('wrk.method = "POST"\nwrk.body = "%s"\n'
                    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
                    % body.decode("ascii").replace("\\", "\\\\").replace('"', '\\"'))
        script = ["-s", f.name]
    proc = subprocess.Popen([wrk, "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency",
                             "--timeout", "10s", *script, "http://127.0.0.1:%d%s" % (port, path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.script = script[1] if script else None
    return proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> WrkResult:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if getattr(proc, "script", None):
            os.unlink(proc.script)
    assert proc.returncode == 0, out
    return parse(out)
