"""mnistkit-build through its CLI: one-line errors, groups as sources, the build-tool image."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mnistkit.cli.build import main as build_main
from support import CANARY, REPO, USER, free_port

pytestmark = pytest.mark.docker


def _cli(args, stdin=None):
    return CliRunner(mix_stderr=False).invoke(build_main, args, input=stdin)


PUSH = ["--push", "--username", USER, "--password-stdin"]
ERRORS = {  # case -> (extra arguments, stdin, what the one line says)
    "wrong password": (
        lambda reg: ["--image", f"{reg}/mnistkit/mnist:wrongpw", *PUSH],
        "wrong\n",
        "refused the credentials",
    ),
    "registry down": (
        lambda reg: ["--image", f"127.0.0.1:{free_port()}/mnistkit/mnist:down", *PUSH],
        CANARY + "\n",
        "cannot reach the registry",
    ),
    "unknown builder": (
        lambda reg: ["--builder", "mnistkit/no-such-builder:1"],
        None,
        "builder image mnistkit/no-such-builder:1 not found",
    ),
    "bad image name": (lambda reg: ["--image", "Bad Name"], None, "is not an image reference"),
    "push without an image name": (lambda reg: ["--push"], None, "--push needs --image REGISTRY/NAME:TAG"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_cli_errors_are_one_line(case, trained_run, docker_engine, builder_image, registry, tmp_path):
    extra, stdin, message = ERRORS[case]
    args = [
        str(trained_run.run_dir),
        "--docker-host",
        docker_engine.host,
        "--work-dir",
        str(tmp_path),
        *extra(registry.address),
    ]
    r = _cli(args, stdin)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and lines and lines[-1].startswith("Error: ") and message in lines[-1], r.stderr
    assert sum(line.startswith("Error") for line in lines) == 1 and "Traceback" not in r.stderr
    if case == "unknown builder":  # said before the ONNX export and its 10,000-image parity check
        assert "ONNX" not in r.stderr, r.stderr
    if "--image" in args and "--push" in args:  # the registry is checked before the build: nothing was built
        image = args[args.index("--image") + 1]
        assert not docker_engine.client().images.list(name=image), f"{image} was built before the push failed"


def test_not_a_model_is_one_line(tmp_path):
    r = _cli([str(tmp_path), "--source-only", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"Error: no manifest.json in {tmp_path} or {tmp_path / 'model'}; is this a mnistkit run folder?"
    ]


def test_cli_builds_from_a_group_with_json(trained_run, docker_engine, builder_image, tmp_path):
    # a search group folder: its recorded best trial is what gets built
    group = tmp_path / "group"
    (group / "trials").mkdir(parents=True)
    import shutil

    shutil.copytree(trained_run.run_dir, group / "trials" / "trial-000")
    (group / "best.json").write_text(
        json.dumps(
            {
                "trial": "trial-000",
                "artifact": "moved-away",
                "artifact_relative": "trials/trial-000/model",
                "artifact_sha256": trained_run.artifact_sha256,
            }
        )
    )
    r = _cli(
        [
            str(group),
            "--image",
            "mnistkit/mnist:from-group",
            "--docker-host",
            docker_engine.host,
            "--work-dir",
            str(tmp_path / "w"),
            "--json",
        ]
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["artifact_sha256"] == trained_run.artifact_sha256 and out["labels"]["io.mnistkit.trial"] == "trial-000"


def test_build_tool_image_runs_mnistkit_build(docker_client, builder_image):
    from mnistkit.build.builder_image import ensure_image
    from support import HOME

    tag = ensure_image(docker_client, "tool", cache_dir=HOME)
    out = docker_client.containers.run(tag, ["--help"], remove=True, network_disabled=True).decode()
    assert "Package a trained model as a Seldon Core image" in out
    assert docker_client.images.get(tag).attrs["Config"]["User"] == "1001"


@pytest.mark.parametrize("command", [["builder"], ["manifests", "SRC", "--image", "127.0.0.1:5000/m/x:1"]])
def test_a_registry_docker_would_read_as_docker_hub_is_refused_before_anything_runs(command, trained_run):
    """``--registry registry`` (no dot, no port) would tag images as Docker Hub's account
    "registry" and send them, with the credentials found for that host, to Docker Hub."""
    args = [str(trained_run.run_dir) if a == "SRC" else a for a in command]
    r = _cli([*args, "--registry", "registry", *(["--push"] if command == ["builder"] else [])])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        "Error: registry 'registry' has no dot and no port, so docker would push to Docker Hub instead; "
        "give host:port (e.g. registry:5000) or a domain name"
    ], r.stderr


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (
            ["builder", "--server", "mlserver", "--kind", "tool"],
            None,
            "--kind and --server each choose the image; give one",
        ),
        (["builder", "--tool", "--train"], None, "--tool and --train each choose the image; give one"),
        (["builder", "--runtime", "torch"], None, "--runtime goes with --server"),
        (
            ["builder", "--registry", "127.0.0.1:5000", "--password-stdin"],
            "\n",
            "--password-stdin read an empty password",
        ),
    ],
)
def test_builder_flags_that_contradict_or_are_empty_are_one_line(args, stdin, message):
    """Refused before any engine starts, instead of one flag quietly winning."""
    r = _cli(args, stdin)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [  # found by a new-user trial: the first ran a whole docker build, the rest went unheard
        (["--source-only", ""], "--source-only is empty"),
        (["--source-only", "{tmp}/s", "--smoke-test"], "--source-only builds no image, so --smoke-test"),
        (
            ["--source-only", "{tmp}/s", "--push", "--image", "127.0.0.1:5000/m:1"],
            "--source-only builds no image, so --push",
        ),
        (["--source-only", "{tmp}/s", "--use-s2i"], "--source-only builds no image, so --use-s2i"),
        (["--source-only", "{tmp}/s", "--manifests", "{tmp}/m"], "--source-only builds no image, so --manifests"),
        (["--wait-for-engine", "inf"], "--wait-for-engine must be 0 .. 86400 seconds"),
        (["--wait-for-engine", "-1"], "--wait-for-engine must be 0 .. 86400 seconds"),
        (["-q", "-v", "--source-only", "{tmp}/s"], "-q and -v ask for less and more detail at once"),
    ],
)
def test_image_flags_that_would_go_unheard_are_one_line(trained_run, tmp_path, args, message):
    """Refused before any engine starts or anything is written."""
    r = _cli(["image", str(trained_run.run_dir), *[a.format(tmp=tmp_path) for a in args]])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_kserve_mode_without_the_v2_server_is_refused(trained_run, tmp_path):
    r = _cli(
        [
            "manifests",
            str(trained_run.run_dir),
            "--image",
            "127.0.0.1:5000/m:1",
            "--out",
            str(tmp_path / "c"),
            "--kserve-mode",
            "Knative",
        ]
    )
    assert r.exit_code == 1 and "written only with --server mlserver" in r.stderr
    assert not (tmp_path / "c").exists()


def _tiny_image(client, tag: str, label: str) -> str:
    import io

    dockerfile = f"FROM mnistkit/base:bookworm\nLABEL io.mnistkit.test={label}\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    return image.id


def test_prune_removes_stale_builders_and_untagged_images_only(docker_engine, docker_client, builder_image):
    """`mnistkit-build prune`: a builder tag with a digest this code would not make goes, and
    so does an untagged image; the current builder, a model image and other tags stay."""
    import docker

    stale = "mnistkit/builder:seldon-onnx-000000000000"
    kept = ["mnistkit/mnist:prune-test", "example.org/other/builder:seldon-onnx-000000000000"]
    _tiny_image(docker_client, stale, "stale")
    for tag in kept:
        _tiny_image(docker_client, tag, tag)
    dangling = _tiny_image(docker_client, "mnistkit-test/retagged:1", "first")
    _tiny_image(docker_client, "mnistkit-test/retagged:1", "second")  # the first one loses its tag
    try:
        dry = _cli(["prune", "--dry-run", "--docker-host", docker_engine.host])
        assert dry.exit_code == 0, dry.output + dry.stderr
        assert f"would remove {stale}" in dry.output and builder_image not in dry.output
        # the untagged image too (a dry run listed nothing of what the real prune removed)
        assert f"would remove untagged image {dangling.removeprefix('sha256:')[:10]}" in dry.output, dry.output
        assert "image(s) would be removed, up to" in dry.output
        docker_client.images.get(stale)  # still there

        result = _cli(["prune", "--docker-host", docker_engine.host])
        assert result.exit_code == 0, result.output + result.stderr
        assert f"removed {stale}" in result.output and "MB reclaimed" in result.output
        for gone in (stale, dangling):
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get(gone)
        for tag in (builder_image, *kept, "mnistkit/base:bookworm", "mnistkit-test/retagged:1"):
            docker_client.images.get(tag)
    finally:
        for tag in (*kept, "mnistkit-test/retagged:1"):
            docker_client.images.remove(tag)


def test_a_build_away_from_the_data_says_how_to_point_at_it(trained_run, tmp_path, monkeypatch):
    """Found by review: the default ONNX build needs MNIST's test set, and the message told the
    user to pass --data-dir or --download, which mnistkit-build does not have."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNISTKIT_DATA_DIR", raising=False)
    r = _cli(["image", str(trained_run.run_dir), "--source-only", str(tmp_path / "s")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "set MNISTKIT_DATA_DIR" in lines[0], r.stderr
    assert "--data-dir" not in lines[0] and not (tmp_path / "s").exists()
    monkeypatch.setenv("MNISTKIT_DATA_DIR", str(REPO / "examples" / "data"))
    assert _cli(["image", str(trained_run.run_dir), "--source-only", str(tmp_path / "s")]).exit_code == 0
