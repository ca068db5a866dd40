"""The embedded registry (``mnistkit.local.registry``): its password hash is the owner's only, and
it starts and authenticates from a folder whose path would break an unquoted YAML config."""

from __future__ import annotations

import base64
import stat
import urllib.error
import urllib.request

from mnistkit.local._proc import free_port
from mnistkit.local.registry import LocalRegistry


def _status(url: str, user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Authorization": f"Basic {token}"}), timeout=10
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_hash_is_private_and_a_folder_with_yaml_punctuation_works(tmp_path):
    root = tmp_path / "team: ml, registry #1"  # ": ", ", " and " #" end or split an unquoted YAML value
    registry = LocalRegistry(root, free_port(), "mnistkit", "a-password").start()
    try:
        assert stat.S_IMODE((root / "htpasswd").stat().st_mode) == 0o600
        url = f"http://{registry.address}/v2/"
        assert _status(url, "mnistkit", "a-password") == 200
        assert _status(url, "mnistkit", "wrong") == 401
    finally:
        registry.stop()
    assert "a-password" not in (root / "config.yml").read_text() + (root / "htpasswd").read_text()
