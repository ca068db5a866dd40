"""A local registry: ``docker-registry`` (Distribution) on 127.0.0.1 with htpasswd auth,
its data and configuration under one folder. For one machine; past it, a real registry."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PushError
from ..files import disk_errors
from ._proc import find_exe, http_status, spawn, stop_group, wait_until

__all__ = ["LocalRegistry", "stop_orphans"]

log = logging.getLogger(__name__)


@dataclass
class LocalRegistry:
    """``docker-registry`` on 127.0.0.1:``port``; the password never shows in a repr."""

    root: Path
    port: int
    username: str
    password: str = field(repr=False)
    log_level: str = "warn"  # "info" logs every request with the user it authenticated
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _held: Any = field(default=None, init=False, repr=False)  # this registry's port lock, while it runs

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _status(self) -> int | None:
        return http_status(f"http://{self.address}/v2/")

    def start(self, timeout: float = 30) -> "LocalRegistry":
        registry = find_exe("docker-registry", "apt-get install docker-registry (make test/demo do this)", PushError)
        htpasswd = find_exe("htpasswd", "apt-get install apache2-utils (make test/demo do this)", PushError)
        self.root = Path(self.root).resolve()
        with disk_errors(PushError, f"cannot start the registry in {self.root}"):
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".start.lock", "a")  # noqa: SIM115  (held while it configures and starts)
        with lock:  # another command starting a registry from this folder: its config.yml is read first
            fcntl.flock(lock, fcntl.LOCK_EX)
            stop_orphans(self.root)
            if self._status() is not None:
                raise PushError(f"port {self.port} is already in use; choose another registry port")
            with disk_errors(PushError, f"cannot start the registry in {self.root}"):
                self._configure(htpasswd)
                self._held = open(self.root / f"registry-{self.port}.lock", "a")  # noqa: SIM115  (held until stop)
                fcntl.flock(self._held, fcntl.LOCK_EX)
                self.proc = spawn([registry, "serve", str(self.root / "config.yml")], self.root / "registry.log")
                (self.root / f"registry-{self.port}.pid").write_text(f"{self.proc.pid}\n")
            try:
                if wait_until(lambda: self._status() == 401, timeout, proc=self.proc):
                    return self
            except BaseException:  # Ctrl-C while it starts: no registry left on the port
                self.stop()
                raise
        exited = self.proc is not None and self.proc.poll() is not None
        self.stop()
        if exited:
            raise PushError(f"docker-registry exited at start; see {self.root / 'registry.log'}")
        raise PushError(f"the registry did not answer on {self.address} within {timeout:.0f}s")

    def _configure(self, htpasswd: str) -> None:
        # the password goes to htpasswd on stdin, never on a command line
        out = subprocess.run([htpasswd, "-iBn", self.username], input=self.password.encode(), capture_output=True)
        if out.returncode != 0:
            raise PushError(f"htpasswd failed: {out.stderr.decode(errors='replace').strip()[:200]}")
        htpasswd_file = self.root / "htpasswd"
        # replaced whole (a registry another command runs from this folder rereads it when it changes)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".htpasswd-")  # mode 0600: the hash is the owner's only
        with os.fdopen(fd, "wb") as f:
            f.write(out.stdout)
        os.replace(tmp, htpasswd_file)
        # values as JSON strings (JSON is YAML): a path with ", " or ": " stays one value
        q = json.dumps
        (self.root / "config.yml").write_text(
            "version: 0.1\n"
            f"log: {{level: {q(self.log_level)}}}\n"
            f"storage: {{filesystem: {{rootdirectory: {q(str(self.root / 'data'))}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: {q(self.address)}}}\n"
            f"auth: {{htpasswd: {{realm: mnistkit, path: {q(str(htpasswd_file))}}}}}\n"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
            (self.root / f"registry-{self.port}.pid").unlink(missing_ok=True)
        if self._held is not None:
            self._held.close()
            self._held = None


def stop_orphans(root: Path) -> None:
    """Stop the registries a command started from ``root`` and then died without stopping (kill
    -9): each starter holds its port's lock while it runs, and the kernel drops a dead one's. An
    orphan held its port for good, and the next demo moved to another, named in its files."""
    for pidfile in Path(root).glob("registry-*.pid"):
        with open(pidfile.with_suffix(".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its starter still runs
                continue
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):  # gone already
                cmdline = b""
            if b"docker-registry" in cmdline and str(Path(root) / "config.yml").encode() in cmdline:
                log.info("stopping the registry (pid %d) a command that ended left running", pid)
                stop_group(pid=pid)
            pidfile.unlink(missing_ok=True)
