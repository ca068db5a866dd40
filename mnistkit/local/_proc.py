"""The one helper for processes mnistkit starts: ports, executables, readiness, stopping.

Every local service (dockerd, the registry, the seldon microservice, MLServer) and every
test harness uses these, so "is it up?" and "stop it and its children" mean one thing.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from ..errors import MnistkitError

__all__ = [
    "ChildServer",
    "free_port",
    "free_ports",
    "port_free",
    "find_exe",
    "spawn",
    "wait_until",
    "http_status",
    "wait_http",
    "stop_group",
    "signals_deferred",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports on 127.0.0.1 that nothing listens on now: all held until all are
    chosen (three ``free_port()`` calls in a row gave the same port twice, now and then)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 (TIME_WAIT counts as free, as servers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def find_exe(name: str, hint: str, error: type[MnistkitError] = MnistkitError) -> str:
    """The path of executable ``name``: on PATH, beside this Python (a venv's scripts), or in
    /usr/sbin and /usr/bin; else ``error`` saying how to get it (``hint``)."""
    for candidate in (
        shutil.which(name),
        str(Path(sys.executable).parent / name),
        f"/usr/sbin/{name}",
        f"/usr/bin/{name}",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise error(f"{name} is not installed; {hint}")


def spawn(
    cmd: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (so its whole group can be stopped), output
    appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd
        )


def wait_until(
    ready: Callable[[], bool], timeout: float, *, proc: subprocess.Popen[bytes] | None = None, interval: float = 0.1
) -> bool:
    """Poll ``ready`` until it is true (True), ``proc`` exits or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(interval)
    return False


def http_status(url: str, timeout: float = 2) -> int | None:
    """The HTTP status ``url`` answers a GET with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, http.client.HTTPException):  # nothing there, or something that is not HTTP
        return None


def wait_http(url: str, timeout: float, *, proc: subprocess.Popen[bytes] | None = None, status: int = 200) -> bool:
    """Wait until ``url`` answers ``status``; False on timeout or when ``proc`` exits."""
    return wait_until(lambda: http_status(url, timeout=1) == status, timeout, proc=proc)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block ends (then act as they would have): for
    clean-up that must not stop halfway, such as stopping an engine and removing its mounts."""
    deferred = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop_group(proc: subprocess.Popen[bytes] | None = None, *, pid: int | None = None, timeout: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (or ``pid``), wait, then SIGKILL what is left."""
    pid = proc.pid if proc is not None else pid
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not _alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # children that outlive their parent (gRPC, gunicorn workers)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class ChildServer:
    """A server mnistkit started as a child process group on loopback ports; a context
    manager that stops the whole group."""

    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    url: str = field(init=False)
    #: seconds the group gets between SIGTERM and SIGKILL
    stop_timeout: ClassVar[float] = 20

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc, timeout=self.stop_timeout)

    def wait_ready(self, path: str, timeout: float) -> bool:
        """Wait until ``path`` answers 200; False when the server exits or the time is up. On
        Ctrl-C the server is stopped: in its own session, it would not get the SIGINT."""
        try:
            return wait_http(f"{self.url}{path}", timeout, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
