"""mnistkit-build against a real dockerd, a real registry with auth and the real
seldon-core microservice."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import docker
import pytest
from click.testing import CliRunner

from conftest import free_port
from docker_env import CANARY, USER, builder_image, docker_client, docker_engine, registry  # noqa: F401
from mnistkit.cli.build import main as build_main
from mnistkit.errors import PackagingError, PushError
from mnistkit.image import BuildConfig, build_model
from mnistkit.microservice import start_microservice
from mnistkit.packaging import make_source_folder, read_s2i_environment, resolve_source, s2i_build, smoke_test
from mnistkit.registry import Credentials, push

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def built(trained_run, docker_client, builder_image, registry, tmp_path_factory):
    image = f"{registry.address}/mnistkit/mnist:ci"
    summary = build_model(
        BuildConfig(source=str(trained_run.run_dir), image=image, builder=builder_image, smoke_test=True, push=True,
                    username=USER, password=CANARY, work_dir=str(tmp_path_factory.mktemp("work"))),
        docker_client,
    )
    return summary


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


def test_password_leaks_nowhere(built, docker_client, docker_engine, registry, trained_run, caplog, tmp_path):
    logger = logging.getLogger("mnistkit")
    logger.addHandler(caplog.handler)  # the CLI stops propagation; listen on mnistkit's logger itself
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        name = _tagged(docker_client, built, registry)
        push(docker_client, name, Credentials(USER, CANARY))  # right password, debug logs on
        with pytest.raises(PushError) as wrong:
            push(docker_client, name, Credentials(USER, CANARY + "x"))
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    assert "pushing" in caplog.text and "refused" in str(wrong.value)
    assert CANARY not in str(wrong.value) and CANARY not in caplog.text
    assert CANARY not in repr(Credentials(USER, CANARY))
    # the CLI at debug level, password on stdin
    r = CliRunner(mix_stderr=False).invoke(build_main, [
        str(trained_run.run_dir), "--image", name, "--push", "-v", "--username", USER, "--password-stdin",
        "--docker-host", docker_engine.host, "--work-dir", str(tmp_path)], input=CANARY + "\n")
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


def test_source_folder_is_what_seldons_builder_expects(trained_run, tmp_path):
    source = resolve_source(trained_run.run_dir)
    folder = make_source_folder(source, tmp_path / "src", wheel_cache=tmp_path / "wheels")
    assert read_s2i_environment(folder) == {"MODEL_NAME": "MnistModel", "API_TYPE": "REST", "SERVICE_TYPE": "MODEL",
                                            "PERSISTENCE": "0"}
    reqs = (folder / "requirements.txt").read_text()
    assert "./wheels/mnistkit-" in reqs and (folder / "wheels").is_dir() and "torch" in reqs
    # Seldon's s2i run script starts `seldon-core-microservice $MODEL_NAME` in the folder: do exactly that
    with start_microservice("MnistModel", cwd=folder, env={"MNISTKIT_MODEL": ""}, log_path=tmp_path / "ms.log") as service:
        import requests

        r = requests.post(service.url + "/api/v1.0/predictions", json={"data": {"ndarray": [[0] * 784]}}, timeout=10)
        assert r.status_code == 200 and len(r.json()["data"]["ndarray"][0]) == 10
    with pytest.raises(PackagingError, match="already exists and is not empty"):
        make_source_folder(source, folder, wheel_cache=tmp_path / "wheels")


def test_failing_assemble_fails_with_its_output_and_leaves_no_container(trained_run, docker_client, builder_image, tmp_path):
    folder = make_source_folder(resolve_source(trained_run.run_dir), tmp_path / "src", wheel_cache=tmp_path / "wheels")
    (folder / ".s2i" / "environment").write_text("MODEL_NAME=NoSuchModule\n")
    before = {c.id for c in docker_client.containers.list(all=True)}
    with pytest.raises(PackagingError, match="assemble failed with exit code 1: .*NoSuchModule.py not found"):
        s2i_build(docker_client, folder, "mnistkit/should-not-exist:1", builder=builder_image)
    assert {c.id for c in docker_client.containers.list(all=True)} == before
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("mnistkit/should-not-exist:1")


def _cli(args, stdin=None):
    return CliRunner(mix_stderr=False).invoke(build_main, args, input=stdin)


def test_cli_errors_are_one_line(trained_run, docker_engine, builder_image, registry, tmp_path):
    base = [str(trained_run.run_dir), "--docker-host", docker_engine.host, "--work-dir", str(tmp_path)]
    cases = {
        "wrong password": (base + ["--image", f"{registry.address}/mnistkit/mnist:wrongpw", "--push", "--username", USER,
                                   "--password-stdin"], "wrong\n", "refused the credentials"),
        "registry down": (base + ["--image", f"127.0.0.1:{free_port()}/mnistkit/mnist:down", "--push", "--username", USER,
                                  "--password-stdin"], CANARY + "\n", "cannot reach the registry"),
        "unknown builder": (base + ["--builder", "mnistkit/no-such-builder:1"], None, "builder image mnistkit/no-such-builder:1 not found"),
        "bad image name": (base + ["--image", "Bad Name"], None, "is not a valid image name"),
        "not a model": ([str(tmp_path), "--source-only", str(tmp_path / "x")], None, "no manifest.json"),
    }
    for name, (args, stdin, message) in cases.items():
        r = _cli(args, stdin)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and lines and lines[-1].startswith("Error: ") and message in lines[-1], (name, r.stderr)
        assert sum(line.startswith("Error") for line in lines) == 1 and "Traceback" not in r.stderr, name


def test_cli_builds_from_a_group_with_json(trained_run, docker_engine, builder_image, tmp_path):
    # a search group folder: its recorded best trial is what gets built
    group = tmp_path / "group"
    (group / "trials").mkdir(parents=True)
    import shutil

    shutil.copytree(trained_run.run_dir, group / "trials" / "trial-000")
    (group / "best.json").write_text(json.dumps({"trial": "trial-000", "artifact": "moved-away",
                                                 "artifact_relative": "trials/trial-000/model",
                                                 "artifact_sha256": trained_run.artifact_sha256}))
    r = _cli([str(group), "--image", "mnistkit/mnist:from-group", "--docker-host", docker_engine.host,
              "--work-dir", str(tmp_path / "w"), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["artifact_sha256"] == trained_run.artifact_sha256 and out["labels"]["io.mnistkit.trial"] == "trial-000"


def test_push_with_credentials_from_the_docker_config_file(built, docker_client, registry, tmp_path, monkeypatch):
    import base64

    folder = tmp_path / "docker-config"
    folder.mkdir()
    auth = base64.b64encode(f"{USER}:{CANARY}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("MNISTKIT_REGISTRY_USERNAME", raising=False)
    from mnistkit.registry import find_credentials

    creds = find_credentials(f"{registry.address}/mnistkit/mnist")
    assert creds is not None and creds.username == USER
    name = _tagged(docker_client, built, registry)
    assert push(docker_client, name, creds).digest == built.digest
    assert find_credentials("other.example.com/x") is None


def test_build_tool_image_runs_mnistkit_build(docker_client, builder_image):
    from mnistkit.builder import TOOL_IMAGE, ensure_builder
    from docker_env import HOME

    tag = ensure_builder(docker_client, cache_dir=HOME, tag=TOOL_IMAGE, dockerfile="Dockerfile.tool")
    out = docker_client.containers.run(tag, ["--help"], remove=True, network_disabled=True).decode()
    assert "Package a trained model as a Seldon Core image" in out
    assert docker_client.images.get(tag).attrs["Config"]["User"] == "1001"
