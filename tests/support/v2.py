"""What the V2 tests share: the MLServer venv's Python, and a raw HTTP helper for hostile bodies."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

import pytest

from support import REPO

#: the venv `make` creates for MLServer (protobuf>=5 cannot live beside seldon-core 1.17.1)
MLS_PYTHON = REPO / ".venv-mlserver" / "bin" / "python"


def mlserver_python() -> str:
    if not MLS_PYTHON.exists():
        pytest.fail(f"{MLS_PYTHON} is missing: `make .venv-mlserver/.installed` (make test) creates it")
    return str(MLS_PYTHON)


def request(
    url: str, method: str = "POST", body: bytes | dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """One raw request (any body, any headers); returns (status, body, headers)."""
    u = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, u.path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
