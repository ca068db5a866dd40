"""Run the real ``seldon-core-microservice`` as a child process on loopback ports.

Used by the tests, the serving benchmark and local runs. The microservice binds
0.0.0.0 and leaves gRPC children behind on SIGTERM, so it runs in its own process group
and the whole group is stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import ServingError

__all__ = ["Microservice", "start_microservice", "free_port", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; raise ``ServingError`` on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServingError(f"the server exited with status {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise ServingError(f"{url} did not answer within {timeout:.0f}s")


@dataclass
class Microservice:
    proc: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int
    grpc_port: int
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the gRPC children outlive SIGTERM
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Microservice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_microservice(
    interface: str = "mnistkit.serving.MnistModel",
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    workers: int = 1,
    threads: int = 1,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> Microservice:
    """Start ``seldon-core-microservice INTERFACE`` on free ports and wait for /health/ping."""
    exe = shutil.which("seldon-core-microservice") or str(Path(sys.executable).parent / "seldon-core-microservice")
    if not Path(exe).exists():
        raise ServingError("seldon-core-microservice is not installed; pip install 'mnistkit[serve]'")
    http, metrics, grpc = free_port(), free_port(), free_port()
    log = Path(log_path) if log_path else Path(cwd or ".") / f"microservice-{http}.log"
    full_env = {**os.environ, "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads), **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, interface, "--service-type", "MODEL", "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    service = Microservice(proc, http, metrics, grpc, log)
    try:
        wait_http(f"{service.url}/health/ping", timeout, proc)
    except ServingError as e:
        service.stop()
        tail = "\n".join(service.log().splitlines()[-5:])
        raise ServingError(f"{e}\n{tail}") from None
    return service
