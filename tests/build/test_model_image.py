"""build_model: a trained run -> an image by the s2i contract, smoke-tested, pushed, pulled by digest and run (real dockerd, registry with auth, seldon-core microservice)."""

from __future__ import annotations

import json

import pytest

from mnistkit.build.source import resolve_source
from mnistkit.build.verify import smoke_test
from support import CANARY, USER

pytestmark = pytest.mark.docker


def test_train_build_push_pull_by_digest_run_query(built, docker_client, trained_run, registry):
    assert built.digest and built.digest.startswith("sha256:")
    assert built.reference == f"{registry.address}/mnistkit/mnist@{built.digest}"
    assert built.smoke["max_abs_diff"] <= 1e-4 and built.smoke["images"] == 11
    # forget the local image, pull it back by digest, run it and query it
    docker_client.images.remove(built.image, force=True)
    pulled = docker_client.images.pull(built.reference, auth_config={"username": USER, "password": CANARY})
    assert built.digest in pulled.attrs["RepoDigests"][0]
    again = smoke_test(docker_client, built.reference, resolve_source(trained_run.run_dir))
    assert again["max_abs_diff"] <= 1e-4


def test_image_labels_user_and_command(built, docker_client, trained_run):
    img = docker_client.images.get(built.reference)
    cfg = img.attrs["Config"]
    assert cfg["User"] == "1001"  # not root
    assert cfg["Cmd"] == ["/usr/libexec/s2i/run"]
    assert "MODEL_NAME=MnistModel" in cfg["Env"] and "SERVICE_TYPE=MODEL" in cfg["Env"]
    labels = cfg["Labels"]
    assert labels["io.mnistkit.artifact.sha256"] == trained_run.artifact_sha256
    assert labels["io.mnistkit.run.id"] == "tiny"
    assert json.loads(labels["io.mnistkit.params"])["lr"] == 0.1
    assert json.loads(labels["io.mnistkit.metrics"])["test_accuracy"] == trained_run.best_accuracy
    assert labels["org.opencontainers.image.title"] == "mnistkit-mnist"
    assert img.attrs["Size"] < 1.3e9
