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


def test_a_registry_whose_starter_was_killed_is_stopped_by_the_next_start(tmp_path):
    """kill -9 of the command that started it left the registry holding its port for good (the
    next demo moved to another port and named it in its files). Two commands starting registries
    from one folder at once each get their own, working: they raced on its config and htpasswd."""
    import subprocess
    import sys
    import threading

    from mnistkit.local._proc import port_free, wait_until
    from mnistkit.local.registry import stop_orphans

    root = tmp_path / "registry"
    port = free_port()
    code = (
        "import sys\nfrom mnistkit.local.registry import LocalRegistry\n"
        "LocalRegistry(sys.argv[1], int(sys.argv[2]), 'mnistkit', 'a-password').start()\n"
        "print('started', flush=True)\nsys.stdin.readline()\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", code, str(root), str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout.readline().strip() == "started"  # type: ignore[union-attr]
    starter.kill()
    starter.wait(timeout=30)
    assert not port_free(port)  # orphaned, still serving
    stop_orphans(root)
    assert wait_until(lambda: port_free(port), 10) and not list(root.glob("registry-*.pid"))

    ports = [free_port(), free_port()]
    started: list[LocalRegistry] = []
    threads = [
        threading.Thread(target=lambda p=p: started.append(LocalRegistry(root, p, "mnistkit", "a-password").start()))
        for p in ports
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert sorted(r.port for r in started) == sorted(ports)
        for r in started:
            assert _status(f"http://{r.address}/v2/", "mnistkit", "a-password") == 200
    finally:
        for r in started:
            r.stop()


def test_the_demo_password_is_made_once_and_an_empty_one_is_made_again(tmp_path):
    from mnistkit.pipeline import _password

    first = _password(tmp_path)
    assert first and _password(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "registry" / "password").stat().st_mode) == 0o600
    (tmp_path / "registry" / "password").write_text("")  # a kill or a full disk mid-write, before
    again = _password(tmp_path)
    assert again and again != first and (tmp_path / "registry" / "password").read_text().strip() == again
    assert [p.name for p in (tmp_path / "registry").iterdir()] == ["password"]  # no temporary file left


def test_ports_chosen_together_are_all_different():
    """Three free_port() calls in a row gave the same port twice now and then (a reviewer saw 6 in
    20,000 triples), and the server that got it failed to bind; the servers now take theirs together."""
    from mnistkit.local._proc import free_ports

    for _ in range(2000):
        ports = free_ports(3)
        assert len(set(ports)) == 3
