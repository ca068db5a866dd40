"""The s2i source folder and the s2i contract over the docker SDK."""

from __future__ import annotations

import pytest

import docker
from mnistkit.build.s2i import make_source_folder, read_s2i_environment, s2i_build
from mnistkit.build.source import resolve_source
from mnistkit.errors import PackagingError
from mnistkit.local.microservice import start_microservice

pytestmark = pytest.mark.docker


def test_source_folder_is_what_seldons_builder_expects(trained_run, tmp_path):
    source = resolve_source(trained_run.run_dir)
    folder = make_source_folder(source, tmp_path / "src", wheel_cache=tmp_path / "wheels")
    assert read_s2i_environment(folder) == {
        "MODEL_NAME": "MnistModel",
        "API_TYPE": "REST",
        "SERVICE_TYPE": "MODEL",
        "PERSISTENCE": "0",
    }
    reqs = (folder / "requirements.txt").read_text()
    assert "./wheels/mnistkit-" in reqs and (folder / "wheels").is_dir()
    # Seldon's s2i run script starts `seldon-core-microservice $MODEL_NAME` in the folder: do exactly that
    with start_microservice(
        "MnistModel", cwd=folder, env={"MNISTKIT_MODEL": ""}, log_path=tmp_path / "ms.log"
    ) as service:
        import requests

        r = requests.post(service.url + "/api/v1.0/predictions", json={"data": {"ndarray": [[0] * 784]}}, timeout=10)
        assert r.status_code == 200 and len(r.json()["data"]["ndarray"][0]) == 10
    with pytest.raises(PackagingError, match="already exists and is not empty"):
        make_source_folder(source, folder, wheel_cache=tmp_path / "wheels")


def test_failing_assemble_fails_with_its_output_and_leaves_no_container(
    trained_run, docker_client, builder_image, tmp_path
):
    folder = make_source_folder(resolve_source(trained_run.run_dir), tmp_path / "src", wheel_cache=tmp_path / "wheels")
    (folder / ".s2i" / "environment").write_text("MODEL_NAME=NoSuchModule\n")
    before = {c.id for c in docker_client.containers.list(all=True)}
    with pytest.raises(PackagingError, match="assemble failed with exit code 1: .*NoSuchModule.py not found"):
        s2i_build(docker_client, folder, "mnistkit/should-not-exist:1", builder=builder_image)
    assert {c.id for c in docker_client.containers.list(all=True)} == before
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("mnistkit/should-not-exist:1")


def test_ctrl_c_while_an_image_starts_leaves_no_container(docker_engine, docker_client, builder_image):
    """Ctrl-C while the smoke test waits for the image to answer: the container goes with it,
    instead of staying on the host network. (The builder image stands for a model image that
    never answers: its command prints its usage and exits, so the wait would last the timeout.)"""
    import signal
    import subprocess
    import sys

    from mnistkit.local._proc import wait_until

    label = f"io.mnistkit.served={builder_image}"
    code = (
        "import docker, sys\n"
        "from mnistkit.build.verify import run_on_loopback\n"
        "client = docker.DockerClient(base_url=sys.argv[1])\n"
        "run_on_loopback(client, sys.argv[2], {}, 9, '/health/ping', 120, 'did not serve')\n"
    )
    for stale in docker_client.containers.list(all=True, filters={"label": label}):  # from an aborted run
        stale.remove(force=True)
    proc = subprocess.Popen([sys.executable, "-c", code, docker_engine.host, builder_image], stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: docker_client.containers.list(all=True, filters={"label": label}), 60, proc=proc)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert b"KeyboardInterrupt" in proc.stderr.read()
    assert not docker_client.containers.list(all=True, filters={"label": label})


def test_two_builds_of_one_builder_take_turns_and_the_second_uses_the_first(tmp_path, monkeypatch):
    """Two commands building one builder kind at once deleted each other's wheels, and one built
    from an incomplete wheelhouse. The wheelhouse and the build of a kind now take turns per
    home, and the one that waited uses the image the first built. (The wheelhouse and the
    docker build are stood in for by timed functions: the turn-taking is what is tested, and two
    real builds of a builder take minutes on 2 cores; the real ones run in the session fixture.)"""
    import threading
    import time

    import mnistkit.build.builder_image as bi

    kind = bi.KINDS["seldon-onnx"]
    built: set[str] = set()
    spans: list[tuple[float, float]] = []

    def fake_build(client, kind, wheels, tag, base):
        start = time.monotonic()
        time.sleep(0.5)
        built.add(tag)
        spans.append((start, time.monotonic()))
        return tag

    monkeypatch.setattr(bi, "make_base_image", lambda *a, **k: None)
    monkeypatch.setattr(bi, "make_wheelhouse", lambda kind, cache: tmp_path)
    monkeypatch.setattr(bi, "_build_kind", fake_build)
    monkeypatch.setattr(bi, "_image_exists", lambda client, tag: tag in built)
    # both see no image yet and go to build; the lock lets one build, the other then finds it
    threads = [
        threading.Thread(target=bi.ensure_image, args=(None, kind), kwargs={"cache_dir": tmp_path}) for _ in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(spans) == 1 and built == {bi.image_tag(kind)}
