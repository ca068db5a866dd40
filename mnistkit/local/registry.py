"""A local registry: ``docker-registry`` (Distribution) on 127.0.0.1 with htpasswd auth,
its data and configuration under one folder. For one machine; past it, a real registry."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PushError
from ..files import disk_errors
from ._proc import find_exe, http_status, spawn, stop_group, wait_until

__all__ = ["LocalRegistry"]


@dataclass
class LocalRegistry:
    """``docker-registry`` on 127.0.0.1:``port``; the password never shows in a repr."""

    root: Path
    port: int
    username: str
    password: str = field(repr=False)
    log_level: str = "warn"  # "info" logs every request with the user it authenticated
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _status(self) -> int | None:
        return http_status(f"http://{self.address}/v2/")

    def start(self, timeout: float = 30) -> "LocalRegistry":
        registry = find_exe("docker-registry", "apt-get install docker-registry (make test/demo do this)", PushError)
        htpasswd = find_exe("htpasswd", "apt-get install apache2-utils (make test/demo do this)", PushError)
        self.root = Path(self.root).resolve()
        if self._status() is not None:
            raise PushError(f"port {self.port} is already in use; choose another registry port")
        with disk_errors(PushError, f"cannot start the registry in {self.root}"):
            self.root.mkdir(parents=True, exist_ok=True)
            self._configure(htpasswd)
            self.proc = spawn([registry, "serve", str(self.root / "config.yml")], self.root / "registry.log")
        try:
            if wait_until(lambda: self._status() == 401, timeout, proc=self.proc):
                return self
        except BaseException:  # Ctrl-C while it starts: no registry left on the port
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise PushError(f"docker-registry exited at start; see {self.root / 'registry.log'}")
        self.stop()
        raise PushError(f"the registry did not answer on {self.address} within {timeout:.0f}s")

    def _configure(self, htpasswd: str) -> None:
        # the password goes to htpasswd on stdin, never on a command line
        out = subprocess.run([htpasswd, "-iBn", self.username], input=self.password.encode(), capture_output=True)
        if out.returncode != 0:
            raise PushError(f"htpasswd failed: {out.stderr.decode(errors='replace').strip()[:200]}")
        htpasswd_file = self.root / "htpasswd"
        htpasswd_file.unlink(missing_ok=True)
        fd = os.open(htpasswd_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the hash is the owner's only
        with os.fdopen(fd, "wb") as f:
            f.write(out.stdout)
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
