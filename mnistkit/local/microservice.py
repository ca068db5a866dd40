"""Run the real ``seldon-core-microservice`` as a child process on loopback ports.

Used by the tests, the serving benchmark and local runs. The microservice binds 0.0.0.0
and leaves gRPC children behind on SIGTERM, so it runs in its own process group and the
whole group is stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ServingError
from ._proc import ChildServer, find_exe, free_ports, spawn

__all__ = ["Microservice", "start_microservice"]


class Microservice(ChildServer):
    """``seldon-core-microservice`` running as a child process group."""

    stop_timeout = 10


def start_microservice(
    interface: str = "mnistkit.serving.MnistModel",
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    workers: int = 1,
    threads: int = 1,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 60,
    command: list[str] | None = None,
) -> Microservice:
    """Start ``seldon-core-microservice INTERFACE`` (or ``command``, which takes the same
    arguments) on free ports and wait for /health/ping."""
    exe = command or [find_exe("seldon-core-microservice", "pip install 'mnistkit[serve]'", ServingError)]
    http, metrics, grpc = free_ports(3)
    log = Path(log_path) if log_path else Path(cwd or ".") / f"microservice-{http}.log"
    full_env = {
        **os.environ,
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
        "MNISTKIT_HOST": "127.0.0.1",  # (mnistkit's launcher; the bare seldon-core-microservice binds 0.0.0.0)
        **(env or {}),
    }
    proc = spawn(
        [
            *exe,
            interface,
            "--service-type",
            "MODEL",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        log,
        env=full_env,
        cwd=cwd,
    )
    service = Microservice(proc, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=log)
    if not service.wait_ready("/health/ping", timeout):
        service.stop()
        tail = "\n".join(service.log().splitlines()[-5:])
        state = (
            f"exited with status {proc.returncode}"
            if proc.returncode is not None
            else f"did not answer within {timeout:.0f}s"
        )
        raise ServingError(f"the microservice {state}:\n{tail}")
    return service
