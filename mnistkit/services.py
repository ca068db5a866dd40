"""The embedded local services: a dockerd and a registry with htpasswd auth, each under
one folder, on loopback. For one machine only; past it, use a real engine and registry.

Both are started in their own process session and stopped by ``stop()`` only when this
process started them; a dockerd already answering on the folder's socket is reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import PackagingError, PushError

__all__ = ["LocalDocker", "LocalRegistry", "connect_docker", "mnistkit_home"]


def _which(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if not path:
        raise PackagingError(f"{name} is not installed; apt-get install {package} (make test/demo do this)")
    return path


def _stop(proc: subprocess.Popen[bytes] | None, pid: int | None = None, timeout: float = 20) -> None:
    pid = proc.pid if proc else pid
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll ``ready`` until it is true (True), the process exits or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(interval)
    return False


@dataclass
class LocalDocker:
    """A dockerd whose data, exec root, pidfile and socket all live under ``root``."""

    root: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 600):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.client(timeout=5).ping())
        except Exception:  # docker raises several types for a dead socket
            return False

    def start(self, timeout: float = 60) -> "LocalDocker":
        self.root = Path(self.root).resolve()
        if self._answers():
            return self
        dockerd = _which("dockerd", "docker.io")
        self.root.mkdir(parents=True, exist_ok=True)
        # /exec must be short: unix socket paths are limited to 108 bytes
        exec_root = Path("/run/mnistkit") / hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        exec_root.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.proc = _spawn(
            [dockerd, "--data-root", str(self.root / "data"), "--exec-root", str(exec_root),
             "--pidfile", str(self.root / "dockerd.pid"), "--host", self.host, "--storage-driver", "overlay2",
             "--iptables=false", "--ip6tables=false", "--bridge=none"],
            self.root / "dockerd.log",
        )
        if _wait_ready(self.proc, self._answers, timeout, 0.2):
            return self
        if self.proc.poll() is not None:
            tail = (self.root / "dockerd.log").read_text(errors="replace").splitlines()[-3:]
            raise PackagingError(f"dockerd exited at start: {' | '.join(tail)}")
        self.stop()
        raise PackagingError(f"dockerd did not answer on {self.socket} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@dataclass
class LocalRegistry:
    """``docker-registry`` (Distribution) on 127.0.0.1:``port`` with htpasswd auth."""

    root: Path
    port: int
    username: str
    password: str
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _status(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return None

    def start(self, timeout: float = 30) -> "LocalRegistry":
        registry = _which("docker-registry", "docker-registry")
        htpasswd = _which("htpasswd", "apache2-utils")
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if self._status() is not None:
            raise PushError(f"port {self.port} is already in use; choose another registry port")
        # the password goes to htpasswd on stdin, never on a command line
        out = subprocess.run([htpasswd, "-iBn", self.username], input=self.password.encode(), capture_output=True, check=True)
        (self.root / "htpasswd").write_bytes(out.stdout)
        (self.root / "config.yml").write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.address}'}}\n"
            f"auth: {{htpasswd: {{realm: mnistkit, path: {self.root / 'htpasswd'}}}}}\n"
        )
        self.proc = _spawn([registry, "serve", str(self.root / "config.yml")], self.root / "registry.log")
        if _wait_ready(self.proc, lambda: self._status() == 401, timeout, 0.1):
            return self
        if self.proc.poll() is not None:
            raise PushError(f"docker-registry exited at start; see {self.root / 'registry.log'}")
        self.stop()
        raise PushError(f"the registry did not answer on {self.address} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def connect_docker(docker_host: str | None = None, *, home: Path | None = None) -> tuple[Any, LocalDocker | None]:
    """A docker client: ``docker_host`` or ``$DOCKER_HOST`` if given, else the machine's
    engine at /var/run/docker.sock if it answers, else an embedded dockerd under
    ``home``/docker (started here; the caller stops it). Returns (client, embedded or None)."""
    import docker

    host = docker_host or os.environ.get("DOCKER_HOST")
    if host:
        try:
            client = docker.DockerClient(base_url=host, timeout=600)
            client.ping()
        except docker.errors.DockerException as e:
            raise PackagingError(f"cannot reach the docker engine at {host}: {type(e).__name__}") from None
        return client, None
    if os.path.exists("/var/run/docker.sock"):
        try:
            client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=600)
            client.ping()
            return client, None
        except docker.errors.DockerException:
            pass
    local = LocalDocker(Path(home or mnistkit_home()) / "docker").start()
    return local.client(), local


def mnistkit_home() -> Path:
    """Where embedded services keep their state: ``$MNISTKIT_HOME`` or ``~/.mnistkit``."""
    return Path(os.environ.get("MNISTKIT_HOME") or Path.home() / ".mnistkit")
