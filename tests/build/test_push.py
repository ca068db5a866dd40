"""Pushing with credentials: the password leaks nowhere; credentials come from the docker config."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
from click.testing import CliRunner

from mnistkit.build.push import Credentials, find_credentials, push
from mnistkit.cli.build import main as build_main
from mnistkit.errors import PushError
from mnistkit.imageref import ImageRef
from support import CANARY, USER

pytestmark = pytest.mark.docker


def test_password_leaks_nowhere(built, docker_client, docker_engine, registry, trained_run, caplog, tmp_path):
    logger = logging.getLogger("mnistkit")
    logger.addHandler(caplog.handler)  # the CLI stops propagation; listen on mnistkit's logger itself
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        name = _tagged(docker_client, built, registry)
        push(docker_client, ImageRef.parse(name), Credentials(USER, CANARY))  # right password, debug logs on
        with pytest.raises(PushError) as wrong:
            push(docker_client, ImageRef.parse(name), Credentials(USER, CANARY + "x"))
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    assert "pushing" in caplog.text and "refused" in str(wrong.value)
    assert CANARY not in str(wrong.value) and CANARY not in caplog.text
    assert CANARY not in repr(Credentials(USER, CANARY))
    # the CLI at debug level, password on stdin
    r = CliRunner(mix_stderr=False).invoke(
        build_main,
        [
            str(trained_run.run_dir),
            "--image",
            name,
            "--push",
            "-v",
            "--username",
            USER,
            "--password-stdin",
            "--docker-host",
            docker_engine.host,
            "--work-dir",
            str(tmp_path),
        ],
        input=CANARY + "\n",
    )
    assert r.exit_code == 0, r.stderr
    assert "pushed" in r.stdout and CANARY not in r.stdout + r.stderr
    # history, inspect, and the files of every layer
    img = docker_client.images.get(name)
    assert CANARY not in json.dumps(img.attrs) and CANARY not in json.dumps(img.history())
    blob = b"".join(img.save())
    with tarfile.open(fileobj=io.BytesIO(blob)) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member).read() if member.isfile() else b""
            assert CANARY.encode() not in data, member.name


def _tagged(client, built, registry):
    name = f"{registry.address}/mnistkit/mnist:ci"
    client.images.get(built.reference).tag(name)
    return name


def test_push_with_credentials_from_the_docker_config_file(built, docker_client, registry, tmp_path, monkeypatch):
    import base64

    folder = tmp_path / "docker-config"
    folder.mkdir()
    auth = base64.b64encode(f"{USER}:{CANARY}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    creds = find_credentials(ImageRef.parse(f"{registry.address}/mnistkit/mnist"))
    assert creds is not None and creds.username == USER
    name = _tagged(docker_client, built, registry)
    assert push(docker_client, ImageRef.parse(name), creds).digest == built.digest
    assert find_credentials(ImageRef.parse("other.example.com/x")) is None
