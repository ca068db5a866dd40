"""Shared fixtures: the real MNIST data loaded once, one tiny trained run, and the real
components the packaging tests need — a dockerd and a registry with htpasswd auth on
loopback, and mnistkit's builder image (cached under .mnistkit/ between runs)."""

from __future__ import annotations

import shutil
import signal

import pytest

from support import CANARY, HOME, USER, free_port


def pytest_configure(config):
    """The Ctrl-C tests send SIGINT to the processes they start. A suite started in the
    background by a shell without job control (`make test &`, nohup, some CI runners) inherits
    SIGINT ignored, and so would every process it starts: those SIGINTs would go unheard. A
    handler here is reset to the default in each process the suite starts."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def mnist():
    from mnistkit.data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory):
    """A real, short training run (5,000 images, 2 epochs): good enough to predict digits."""
    from mnistkit.config import TrainConfig
    from mnistkit.train import fit

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(
        epochs=2, lr=0.1, momentum=0.5, batch_size=64, train_samples=5000, output_dir=str(out), run_name="tiny", seed=3
    )
    return fit(config, mnist)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No Polyaxon and no registry credentials leak in from the environment running the tests."""
    for key in (
        "POLYAXON_RUN_INSTANCE",
        "POLYAXON_IS_MANAGED",
        "MNISTKIT_POLYAXON",
        "MNISTKIT_REGISTRY",
        "MNISTKIT_REGISTRY_USERNAME",
        "MNISTKIT_REGISTRY_PASSWORD",
    ):
        monkeypatch.delenv(key, raising=False)


def _have(*tools: str) -> bool:
    return all(shutil.which(t) or shutil.which(t, path="/usr/sbin:/usr/bin") for t in tools)


@pytest.fixture(scope="session")
def docker_engine():
    if not _have("dockerd", "docker-registry", "htpasswd", "debootstrap"):
        pytest.fail("dockerd, docker-registry, htpasswd and debootstrap must be installed (make test installs them)")
    from mnistkit.local.dockerd import LocalDocker

    engine = LocalDocker(HOME / "docker").start()
    before = _tags(engine.client())
    yield engine
    _remove_session_images(engine.client(), before)
    engine.stop()


def _tags(client) -> set[str]:
    return {tag for image in client.images.list() for tag in image.tags}


def _remove_session_images(client, before: set[str]) -> None:
    """The images this session tagged go (model images, registry tags), then what
    `mnistkit-build prune` removes: builders made from older inputs and untagged layers. The
    current builders, the base image and the rehearsal's dind stand-in stay for the next
    session. Without this a checkout's engine grew with every run (170 images, 25 GB, and one
    CI run out of disk)."""
    import docker
    from mnistkit.build.builder_image import BASE_IMAGE, KINDS, image_tag, prune_images

    keep = before | {BASE_IMAGE} | {image_tag(kind) for kind in KINDS.values()}
    for tag in sorted(t for t in _tags(client) - keep if not t.startswith("mnistkit-rehearsal/")):
        try:
            client.images.remove(tag)
        except docker.errors.APIError as e:  # a container still using it: the next session retries
            print(f"kept {tag}: {e.explanation or e}")
    prune_images(client)


@pytest.fixture(scope="session")
def docker_client(docker_engine):
    return docker_engine.client()


@pytest.fixture(scope="session")
def builder_image(docker_client):
    from mnistkit.build.builder_image import ensure_image

    return ensure_image(docker_client, "seldon-onnx", cache_dir=HOME)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    from mnistkit.local.registry import LocalRegistry

    reg = LocalRegistry(tmp_path_factory.mktemp("registry"), free_port(), USER, CANARY, log_level="info").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def built(trained_run, docker_client, builder_image, registry, tmp_path_factory):
    """The tiny run built into an image, smoke-tested and pushed to the local registry."""
    from mnistkit.build.model_image import BuildConfig, build_model

    image = f"{registry.address}/mnistkit/mnist:ci"
    return build_model(
        BuildConfig(
            source=str(trained_run.run_dir),
            image=image,
            builder=builder_image,
            smoke_test=True,
            push=True,
            username=USER,
            password=CANARY,
            work_dir=str(tmp_path_factory.mktemp("work")),
        ),
        docker_client,
    )
