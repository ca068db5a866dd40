"""Load on loopback for the fault tests: wrk with a Lua script that counts answers by status,
and a small Python load loop that records every request's outcome. Bounded in time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WRK_COUNT", "wrk_counts", "Outcome", "LoadLoop", "REQUEST_2018"]

#: the 2018 client's request: one image of raw int pixels as a flattened tensor
REQUEST_2018 = json.dumps({"data": {"names": [], "tensor": {"shape": [784], "values": [0] * 700 + [255] * 84}}})

WRK_COUNT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; busy = 0; other = 0; last = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 then busy = busy + 1
  else other = other + 1; last = status end
end
function done(summary, latency, requests)
  local o, b, x, l = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("busy"); x = x + t:get("other")
    if t:get("last") ~= 0 then l = t:get("last") end
  end
  local e = summary.errors
  io.write(string.format('MNISTKIT {{"ok": %d, "503": %d, "other": %d, "other_status": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "requests": %d, "p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}}\\n',
    o, b, x, l, e.connect, e.read, e.write, e.timeout, summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def wrk_counts(url: str, *, connections: int, seconds: int, folder: Path, body: str = REQUEST_2018) -> dict:
    """Run wrk against ``url`` and return the counts its Lua script reports."""
    script = folder / "count.lua"
    script.write_text(WRK_COUNT.format(body=body))
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    threads = min(2, connections)
    out = subprocess.run(
        [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "20s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    m = re.search(r"^MNISTKIT (\{.*\})$", out.stdout, re.M)
    assert m, out.stdout + out.stderr
    return json.loads(m.group(1))


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (reset, refused, timeout)
    error: str = ""


@dataclass
class LoadLoop:
    """``threads`` clients posting the 2018 request in a loop until ``stop()``: each request
    on a new connection (gunicorn's sync worker closes it), every outcome recorded."""

    url: str
    threads: int = 8
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        import requests

        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = requests.post(self.url, data=REQUEST_2018, headers={"Content-Type": "application/json"}, timeout=30)
                self.outcomes.append(Outcome(started, time.monotonic(), r.status_code))
            except requests.RequestException as e:
                self.outcomes.append(Outcome(started, time.monotonic(), 0, type(e).__name__))

    def start(self) -> "LoadLoop":
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> list[Outcome]:
        """No new request starts; wait for those in flight."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)
        return list(self.outcomes)
