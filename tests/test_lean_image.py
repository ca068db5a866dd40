"""The default image serves ONNX Runtime without torch: small, parity recorded in its labels,
the same answers as torch in this process, a swapped model.onnx refused at start-up; and
``--runtime torch`` still builds today's image."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import requests

from mnistkit.build.verify import serve_image
from mnistkit.export import MAX_DIFF
from mnistkit.runtime import TorchPredictor

pytestmark = pytest.mark.docker

LEAN_MB = 375  # issue #14's target (0.35x the torch image)


def _run(docker_client, image: str, command: list[str]) -> tuple[int, str]:
    container = docker_client.containers.run(image, command=command, detach=True, network_disabled=True)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_onnx_image_is_lean_and_has_no_torch(built, docker_client):
    img = docker_client.images.get(built.image)
    size_mb = img.attrs["Size"] / 1e6
    print(f"onnx image: {size_mb:.0f} MB")
    assert size_mb <= LEAN_MB
    code, out = _run(
        docker_client,
        built.image,
        ["python", "-c", "import onnxruntime, importlib.util as u; print(u.find_spec('torch'))"],
    )
    assert code == 0 and out.strip().endswith("None"), out


def test_onnx_image_labels_record_parity(built, docker_client):
    labels = docker_client.images.get(built.image).labels
    assert labels["io.mnistkit.runtime"] == "onnx"
    assert labels["io.mnistkit.onnx.parity.images"] == "10000"
    assert float(labels["io.mnistkit.onnx.parity.max_abs_diff"]) <= MAX_DIFF
    assert labels["io.mnistkit.onnx.parity.argmax_equal"] == "10000"
    assert len(labels["io.mnistkit.onnx.sha256"]) == 64


def test_served_answers_equal_in_process_torch_answers(built, docker_client, trained_run, mnist):
    container, url = serve_image(docker_client, built.image)
    try:
        images = mnist.test_images[:1000].numpy()
        got = []
        for i in range(0, 1000, 250):
            body = {"data": {"tensor": {"shape": [250, 784], "values": images[i : i + 250].ravel().tolist()}}}
            r = requests.post(f"{url}/api/v1.0/predictions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            t = r.json()["data"]["tensor"]
            got.append(np.array(t["values"]).reshape(t["shape"]))
            tags = r.json()["meta"]["tags"]
        meta = requests.get(f"{url}/metadata", timeout=10).json()
    finally:
        container.remove(force=True)
    want = TorchPredictor(trained_run.artifact).predict(images.astype(np.float32))
    assert np.abs(np.concatenate(got) - want).max() <= MAX_DIFF
    assert tags["model_sha256"] == trained_run.artifact_sha256
    assert meta["platform"] == "onnxruntime"


def test_swapped_model_onnx_is_refused_at_start_up(built, docker_client):
    """Replace model.onnx in a container of the image (a valid ONNX file: the same one with a
    byte of its producer name changed), start it: it must stop, saying why."""
    container = docker_client.containers.create(built.image, network_disabled=True)
    try:
        bits, _ = container.get_archive("/microservice/model/model.onnx")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            member = tar.getmembers()[0]
            data = tar.extractfile(member).read()
        swapped = data.replace(b"pytorch", b"pytorcH", 1)
        assert swapped != data
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            member.size = len(swapped)
            tar.addfile(member, io.BytesIO(swapped))
        assert container.put_archive("/microservice/model", buf.getvalue())
        container.start()
        code = container.wait(timeout=120)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code != 0
    assert "model.onnx does not match its sha256" in logs, logs[-2000:]


@pytest.fixture(scope="module")
def torch_image(trained_run, docker_client, tmp_path_factory):
    from mnistkit.build.builder_image import ensure_image
    from mnistkit.build.model_image import BuildConfig, build_model
    from support import HOME

    builder = ensure_image(docker_client, "seldon-torch", cache_dir=HOME)
    config = BuildConfig(
        source=str(trained_run.run_dir),
        image="mnistkit/mnist:torch-ci",
        builder=builder,  # no --runtime: the builder's kind label says torch
        smoke_test=True,
        work_dir=str(tmp_path_factory.mktemp("work")),
    )
    return build_model(config, docker_client)


@pytest.mark.slow
def test_runtime_torch_builds_todays_image(torch_image, docker_client):
    labels = docker_client.images.get(torch_image.image).labels
    assert labels["io.mnistkit.runtime"] == "torch" and "io.mnistkit.onnx.sha256" not in labels
    assert torch_image.smoke["max_abs_diff"] <= 1e-4
    code, out = _run(docker_client, torch_image.image, ["sh", "-c", "ls /microservice/model; python -c 'import torch'"])
    assert code == 0 and "model.onnx" not in out, out
    manifest = json.loads(_run(docker_client, torch_image.image, ["cat", "/microservice/model/manifest.json"])[1])
    assert "onnx" not in manifest


def test_a_runtime_the_builder_does_not_serve_is_refused(trained_run, docker_client, builder_image, tmp_path):
    from mnistkit.build.model_image import BuildConfig, build_model
    from mnistkit.errors import ConfigError

    config = BuildConfig(
        source=str(trained_run.run_dir), builder=builder_image, runtime="torch", work_dir=str(tmp_path)
    )
    with pytest.raises(ConfigError, match="serves onnx; use --runtime onnx"):
        build_model(config, docker_client)
