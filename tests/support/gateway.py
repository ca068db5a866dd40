"""Real nginx, configured like Ambassador's Seldon prefix mappings, on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from support.nginx import Nginx, answers

SERVER = """
  server {{
    listen 127.0.0.1:{port};
    # Seldon Core 1.x Ambassador mapping: /seldon/<namespace>/<deployment>/ -> the graph
    location /seldon/{namespace}/{deployment}/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}
    # the 2018 (Seldon 0.2) mapping: /seldon/<deployment>/
    location /seldon/{deployment}/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}
    location / {{ return 404 '{{"status": {{"info": "no mapping", "code": 404}}}}'; }}
  }}
"""


class Gateway(Nginx):
    def __init__(self, root: Path, upstream: int, deployment: str = "mnist", namespace: str = "seldon") -> None:
        super().__init__(root)
        servers = SERVER.format(port=self.port, upstream=upstream, deployment=deployment, namespace=namespace)
        self.start(servers, lambda: answers(f"http://{self.endpoint}/seldon/{deployment}/health/ping"))
