"""Real nginx on a free loopback port, routing like a cluster's ingress does for a V2 server:

* KServe: by Host only, every path — ``<isvc>.<namespace>.example.com`` (Knative mode) and
  ``<isvc>-<namespace>.example.com`` (Standard mode) go to the predictor; any other Host gets 404;
* Seldon Core 1.x with ``protocol: v2``: Ambassador's ``/seldon/<namespace>/<deployment>/`` prefix,
  rewritten to ``/``.
"""

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
events {{ worker_connections 256; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  client_max_body_size 64m;
  server {{
    listen 127.0.0.1:{port} default_server;
    location /seldon/{namespace}/{name}/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}
    location / {{ default_type application/json; return 404 '{{"error": "no route for this host"}}'; }}
  }}
  server {{
    listen 127.0.0.1:{port};
    server_name {name}.{namespace}.example.com {name}-{namespace}.example.com;
    location / {{ proxy_pass http://127.0.0.1:{upstream}; proxy_set_header Host $host; }}
  }}
}}
"""


class V2Gateway:
    def __init__(self, root: Path, upstream: int, name: str = "mnist", namespace: str = "default") -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port, self.name, self.namespace = free_port(), name, namespace
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            CONF.format(user=user, root=root, port=self.port, upstream=upstream, name=name, namespace=namespace)
        )
        self.proc = subprocess.Popen(
            [nginx, "-p", str(root), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        req = urllib.request.Request(f"http://{self.endpoint}/v2/health/ready", headers={"Host": self.host})
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(req, timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((root / "error.log").read_text())
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """The Host KServe's Knative-mode ingress routes by."""
        return f"{self.name}.{self.namespace}.example.com"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
