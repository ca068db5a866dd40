"""Real nginx on a free loopback port, the one runner behind the test gateways (Ambassador's
Seldon paths, KServe's Host routing, the rehearsal's pods): the same ``http`` settings (logs and
temp files under ``root``, a 64 MB body limit), each gateway's own ``server`` blocks."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mnistkit.local._proc import find_exe, free_port, wait_until

__all__ = ["Nginx", "answers"]

CONF = """
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  client_max_body_size 64m;
{servers}
}}
"""


def answers(url: str, headers: dict[str, str] | None = None) -> bool:
    """Whether ``url`` answers a GET with 2xx."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1):
            return True
    except OSError:
        return False


class Nginx:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, servers: str, ready: Callable[[], bool]) -> None:
        """(Re)start with these ``server`` blocks and wait until ``ready()``."""
        self.stop()
        conf = self.root / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(CONF.format(user=user, root=self.root, servers=servers))
        nginx = find_exe("nginx", "apt-get install nginx-light", AssertionError)
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.root), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        if not wait_until(ready, 20, proc=self.proc):
            raise RuntimeError((self.root / "error.log").read_text() or "nginx did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None
