"""mnistkit as users install it: from its wheel, in a venv outside any checkout; and an image
runs exactly the mnistkit that built it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

from mnistkit.build.wheel import package_digest, package_version, self_wheel
from support import CANARY, HOME, REPO, USER

pytestmark = pytest.mark.docker


def test_the_self_wheel_is_the_running_package_and_reproducible(tmp_path):
    a = self_wheel(tmp_path / "a")
    b = self_wheel(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes() and a.name == f"mnistkit-{package_version()}-py3-none-any.whl"
    names = zipfile.ZipFile(a).namelist()
    assert "mnistkit/build/docker/Dockerfile.seldon-torch" in names and "mnistkit/schemas/README.md" in names
    assert not any("__pycache__" in n for n in names)
    meta = zipfile.ZipFile(a).read(f"mnistkit-{package_version()}.dist-info/entry_points.txt").decode()
    assert "mnistkit-build = mnistkit.cli.build:main" in meta


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The checkout's wheel (pip wheel, as a release is made), installed into a fresh venv that
    lives outside the checkout, with the extras for building and manifests."""
    root = tmp_path_factory.mktemp("user")
    assert REPO not in root.parents
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    wheel = next(wheels.glob("mnistkit-*.whl"))
    subprocess.run(
        [
            str(env_dir / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "mnistkit" / "build" / "docker" / "constraints.txt"),  # the lock, less the CUDA torch
            f"{wheel}[build,export,manifests]",
            "torch==2.13.0",  # the CPU wheel on this machine's disk: the export needs torch, not CUDA
        ],
        check=True,
        capture_output=True,
    )
    return env_dir / "bin", root


def _run(bin_dir, root, args, stdin=None, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    full.update({"PATH": f"{bin_dir}:{os.environ['PATH']}", "MNISTKIT_HOME": str(HOME), **env})
    full["MNISTKIT_DATA_DIR"] = str(REPO / "examples" / "data")  # the export checks parity on MNIST's test set
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=root,
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_an_installed_wheel_builds_the_builder_an_image_pushes_it_and_writes_manifests(
    installed, trained_run, docker_engine, registry
):
    bin_dir, root = installed
    where = _run(bin_dir, root, ["python", "-c", "import mnistkit, sys; print(mnistkit.__file__)"])
    assert str(bin_dir.parent) in where.stdout and str(REPO) not in where.stdout  # not the checkout
    r = _run(bin_dir, root, ["mnistkit-build", "builder", "--docker-host", docker_engine.host])
    assert r.returncode == 0, r.stderr
    image = f"{registry.address}/mnistkit/from-wheel:1"
    r = _run(
        bin_dir,
        root,
        [
            "mnistkit-build",
            str(trained_run.run_dir),
            "--image",
            image,
            "--push",
            "--username",
            USER,
            "--password-stdin",
            "--docker-host",
            docker_engine.host,
            "--json",
        ],
        stdin=CANARY + "\n",
    )
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["reference"].startswith(f"{registry.address}/mnistkit/from-wheel@sha256:")
    assert built["labels"]["io.mnistkit.version"] == package_version()  # the same code as the checkout's
    r = _run(
        bin_dir,
        root,
        [
            "mnistkit-build",
            "manifests",
            str(trained_run.run_dir),
            "--image",
            built["reference"],
            "--out",
            str(root / "cluster"),
        ],
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (root / "cluster").iterdir()) == [
        "argo-workflow.yaml",
        "polyaxonfile.yaml",
        "pvcs.yaml",
        "seldondeployment.yaml",
    ]


def test_an_image_serves_the_mnistkit_that_built_it(trained_run, docker_client, builder_image, docker_engine, tmp_path):
    """Change mnistkit in a temporary copy, build with that copy: the image serves the change."""
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "mnistkit", copy / "mnistkit", ignore=shutil.ignore_patterns("__pycache__"))
    serving = copy / "mnistkit" / "serving.py"
    source = serving.read_text()
    assert '"platform": self.platform,' in source  # what the copy changes must be there to change
    serving.write_text(
        source.replace('"platform": self.platform,', '"platform": self.platform + "-changed-in-a-copy",')
    )
    code = "import mnistkit.build.wheel as w; print(w.package_version())"
    changed_version = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(copy)},
        cwd=tmp_path,  # not the checkout: its mnistkit would come first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert changed_version != package_version() and package_digest()[:12] not in changed_version
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnistkit.cli.build",
            str(trained_run.run_dir),
            "--image",
            "mnistkit/changed:1",
            "--builder",
            builder_image,
            "--docker-host",
            docker_engine.host,
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
        ],
        env={**os.environ, "PYTHONPATH": str(copy), "MNISTKIT_DATA_DIR": str(REPO / "examples" / "data")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["labels"]["io.mnistkit.version"] == changed_version
    from mnistkit.build.verify import serve_image

    container, url = serve_image(docker_client, "mnistkit/changed:1")
    try:
        import urllib.request

        meta = json.loads(urllib.request.urlopen(f"{url}/metadata", timeout=10).read())
        assert meta["platform"] == "onnxruntime-changed-in-a-copy"
        assert meta["custom"]["mnistkit_version"] == changed_version
    finally:
        container.remove(force=True)


def test_the_images_constraints_are_the_lock_less_what_images_do_not_take():
    """constraints.txt is made from requirements.lock by `make lock`: it must not fall behind it."""
    import re

    exclude = re.search(r"^IMAGE_EXCLUDE := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    lock = {line for line in (REPO / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")}
    want = {line for line in lock if not re.match(rf"^({exclude})[=_-]", line)}
    constraints = (REPO / "mnistkit" / "build" / "docker" / "constraints.txt").read_text().splitlines()
    assert {line for line in constraints if line and not line.startswith("#")} == want
