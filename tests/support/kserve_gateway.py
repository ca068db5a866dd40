"""Real nginx on a free loopback port, routing like a cluster's ingress does for a V2 server:

* KServe: by Host only, every path — ``<isvc>.<namespace>.example.com`` (Knative mode) and
  ``<isvc>-<namespace>.example.com`` (Standard mode) go to the predictor; any other Host gets 404;
* Seldon Core 1.x with ``protocol: v2``: Ambassador's ``/seldon/<namespace>/<deployment>/`` prefix,
  rewritten to ``/``.
"""

from __future__ import annotations

from pathlib import Path

from support.nginx import Nginx, answers

SERVERS = """
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
"""


class V2Gateway(Nginx):
    def __init__(self, root: Path, upstream: int, name: str = "mnist", namespace: str = "default") -> None:
        super().__init__(root)
        self.name, self.namespace = name, namespace
        self.start(
            SERVERS.format(port=self.port, upstream=upstream, name=name, namespace=namespace),
            lambda: answers(f"http://{self.endpoint}/v2/health/ready", {"Host": self.host}),
        )

    @property
    def host(self) -> str:
        """The Host KServe's Knative-mode ingress routes by."""
        return f"{self.name}.{self.namespace}.example.com"
