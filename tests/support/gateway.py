"""Real nginx, configured like Ambassador's Seldon prefix mappings, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from support import free_port

CONF = """
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  client_max_body_size 64m;
  server {{
    listen 127.0.0.1:{port};
    # Seldon Core 1.x Ambassador mapping: /seldon/<namespace>/<deployment>/ -> the graph
    location /seldon/{namespace}/{deployment}/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}
    # the 2018 (Seldon 0.2) mapping: /seldon/<deployment>/
    location /seldon/{deployment}/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}
    location / {{ return 404 '{{"status": {{"info": "no mapping", "code": 404}}}}'; }}
  }}
}}
"""


class Gateway:
    def __init__(self, root: Path, upstream: int, deployment: str = "mnist", namespace: str = "seldon") -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "nginx.conf"
        conf.write_text(
            CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                root=root,
                port=self.port,
                upstream=upstream,
                deployment=deployment,
                namespace=namespace,
            )
        )
        self.proc = subprocess.Popen(
            [nginx, "-p", str(root), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/seldon/{deployment}/health/ping", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((root / "error.log").read_text())
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
