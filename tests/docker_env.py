"""Session-wide real components for the packaging tests: a dockerd and a registry with
htpasswd auth on loopback, and mnistkit's builder image (cached between runs under
.mnistkit/ so a warm `make test` does not rebuild it)."""

from __future__ import annotations

import shutil

import pytest

from conftest import REPO, free_port

CANARY = "canary-Pw-7f3a9c1e"  # the registry password; it must never leak anywhere
USER = "mnistkit-ci"
HOME = REPO / ".mnistkit"


def _have(*tools: str) -> bool:
    return all(shutil.which(t) or shutil.which(t, path="/usr/sbin:/usr/bin") for t in tools)


@pytest.fixture(scope="session")
def docker_engine():
    if not _have("dockerd", "docker-registry", "htpasswd", "debootstrap"):
        pytest.fail("dockerd, docker-registry, htpasswd and debootstrap must be installed (make test installs them)")
    from mnistkit.services import LocalDocker

    engine = LocalDocker(HOME / "docker").start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def docker_client(docker_engine):
    return docker_engine.client()


@pytest.fixture(scope="session")
def builder_image(docker_client):
    from mnistkit.builder import ensure_builder

    return ensure_builder(docker_client, cache_dir=HOME)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    from mnistkit.services import LocalRegistry

    reg = LocalRegistry(tmp_path_factory.mktemp("registry"), free_port(), USER, CANARY).start()
    yield reg
    reg.stop()
