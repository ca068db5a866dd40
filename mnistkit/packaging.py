"""A trained run -> an s2i source folder -> a Seldon image, over the docker SDK.

The s2i contract, carried out step by step (what ``s2i build SRC BUILDER IMAGE`` does):
read the builder's ``io.openshift.s2i.scripts-url`` and ``io.openshift.s2i.destination``
labels; create a container from the builder running ``<scripts>/assemble`` with the
variables of ``.s2i/environment``; stream the source into ``<destination>/src``; start it
and stream its log; fail with that log when it exits non-zero; commit the result with
``CMD <scripts>/run``, the environment and labels; always remove the container.
Builds get no network. torch is never imported here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .artifact import read_manifest
from .builder import BUILDER_IMAGE, REPO_ROOT
from .errors import ArtifactError, PackagingError, ServingError

__all__ = ["ModelSource", "BuildResult", "resolve_source", "make_source_folder", "read_s2i_environment",
           "s2i_build", "image_labels", "smoke_test", "serve_image", "example_images", "mnistkit_wheel"]

log = logging.getLogger(__name__)

S2I_ENVIRONMENT = {"MODEL_NAME": "MnistModel", "API_TYPE": "REST", "SERVICE_TYPE": "MODEL", "PERSISTENCE": "0"}


@dataclass(frozen=True)
class ModelSource:
    """A verified artifact and where it came from."""

    artifact: Path
    sha256: str
    manifest: dict[str, Any]
    group: str | None = None  # the search group it was chosen from, if any
    trial: str | None = None


@dataclass(frozen=True)
class BuildResult:
    image: str
    image_id: str
    size: int
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)


def resolve_source(path: str | os.PathLike[str]) -> ModelSource:
    """A run folder, an artifact folder (or its manifest), or a search group folder
    (then its recorded best trial)."""
    p = Path(path)
    best: dict[str, Any] | None = None
    if (p / "best.json").is_file():
        from .search import read_best

        best = read_best(p)
        p = Path(best["artifact"])
    try:
        manifest, sha, folder = read_manifest(p)
    except ArtifactError as e:
        raise PackagingError(str(e)) from None
    if best is None:
        return ModelSource(folder, sha, manifest)
    if sha != best["artifact_sha256"]:
        raise PackagingError(f"the best model of {path} changed since it was chosen (sha256 differs); re-run the search")
    return ModelSource(folder, sha, manifest, Path(path).name, best["trial"])


def mnistkit_wheel(cache: Path) -> Path:
    """mnistkit's own wheel (built once per version into ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"mnistkit-{__version__}-*.whl"))
    if found:
        return found[0]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(cache), str(REPO_ROOT)],
                          capture_output=True, text=True)
    found = sorted(cache.glob(f"mnistkit-{__version__}-*.whl"))
    if proc.returncode != 0 or not found:
        raise PackagingError(f"could not build mnistkit's wheel: {proc.stderr.strip().splitlines()[-1:] or '?'}")
    return found[0]


MODEL_MODULE = '''"""Seldon Core entry point written by mnistkit-build: MODEL_NAME={name}."""
from mnistkit.serving import MnistModel as {name}

__all__ = ["{name}"]
'''


def make_source_folder(source: ModelSource, dest: str | os.PathLike[str], *, model_name: str = "MnistModel",
                       wheel_cache: Path | None = None) -> Path:
    """Write the s2i source folder: the model module, ``model/``, ``requirements.txt``,
    ``.s2i/environment`` and mnistkit's wheel. Written into a temporary folder and
    renamed, so ``dest`` is either complete or absent; an existing non-empty ``dest``
    is refused."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model_name):
        raise PackagingError(f"model name {model_name!r} must be a Python identifier (it names MODEL_NAME.py)")
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackagingError(f"{out} already exists and is not empty; choose another folder")
    wheel = mnistkit_wheel(wheel_cache or Path(tempfile.gettempdir()) / "mnistkit-wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)
    try:
        (tmp / f"{model_name}.py").write_text(MODEL_MODULE.format(name=model_name))
        model = tmp / "model"
        model.mkdir()
        for name in ["manifest.json", *source.manifest["files"]]:
            shutil.copy2(source.artifact / name, model / name)
        (tmp / "wheels").mkdir()
        shutil.copy2(wheel, tmp / "wheels" / wheel.name)
        (tmp / "requirements.txt").write_text(
            "# mnistkit and what its Seldon model class needs (seldon-core comes with the builder image)\n"
            f"./wheels/{wheel.name}\n"
            "torch>=2.1\nsafetensors>=0.4\nnumpy>=1.26,<2\npillow\n"
        )
        (tmp / ".s2i").mkdir()
        env = {**S2I_ENVIRONMENT, "MODEL_NAME": model_name}
        (tmp / ".s2i" / "environment").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_s2i_environment(source_dir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    path = source_dir / ".s2i" / "environment"
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, _, v = line.partition("=")
                env[k.strip()] = v.strip()
    return env


def image_labels(source: ModelSource, image: str, builder: str) -> dict[str, str]:
    """OCI annotations plus the model's provenance."""
    m = source.manifest
    labels = {
        "org.opencontainers.image.title": "mnistkit-mnist",
        "org.opencontainers.image.description": "MNIST digit classifier served by Seldon Core (mnistkit)",
        "org.opencontainers.image.version": source.sha256[:12],
        "org.opencontainers.image.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.ref.name": image,
        "org.opencontainers.image.base.name": builder,
        "io.mnistkit.version": __version__,
        "io.mnistkit.artifact.sha256": source.sha256,
        "io.mnistkit.run.id": str(m.get("run", {}).get("id", "")),
        "io.mnistkit.params": json.dumps(m.get("train_config", {}), sort_keys=True),
        "io.mnistkit.metrics": json.dumps(m.get("metrics", {}), sort_keys=True),
        "io.openshift.s2i.build.image": builder,
    }
    if source.group:
        labels["io.mnistkit.group"] = source.group
        labels["io.mnistkit.trial"] = source.trial or ""
    return labels


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _source_tar(source_dir: Path, uid: int, gid: int) -> bytes:
    buf = io.BytesIO()

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(source_dir, arcname="src", filter=owner)
    return buf.getvalue()


def _numeric_user(user: str) -> tuple[int, int]:
    name, _, group = (user or "0").partition(":")
    return (int(name) if name.isdigit() else 0), (int(group) if group.isdigit() else 0)


def s2i_build(client: Any, source_dir: str | os.PathLike[str], image: str, *, builder: str = BUILDER_IMAGE,
              labels: dict[str, str] | None = None) -> BuildResult:
    """Build ``image`` from ``source_dir`` with ``builder`` by the s2i contract."""
    import docker

    started = time.monotonic()
    src = Path(source_dir)
    try:
        b = client.images.get(builder)
    except docker.errors.ImageNotFound:
        raise PackagingError(f"builder image {builder} not found; build it with 'mnistkit-build builder'") from None
    except docker.errors.DockerException as e:
        raise PackagingError(f"cannot talk to the docker engine: {e}") from None
    blabels = b.labels or {}
    scripts_url = blabels.get("io.openshift.s2i.scripts-url")
    if not scripts_url:
        raise PackagingError(f"{builder} is not an s2i builder (no io.openshift.s2i.scripts-url label)")
    if not scripts_url.startswith("image://"):
        raise PackagingError(f"{builder} keeps its s2i scripts at {scripts_url}; only image:// scripts are supported")
    scripts = scripts_url[len("image://"):].rstrip("/")
    destination = blabels.get("io.openshift.s2i.destination", "/tmp").rstrip("/") or "/tmp"
    env = read_s2i_environment(src)
    user = (b.attrs.get("Config") or {}).get("User") or ""
    uid, gid = _numeric_user(user)
    log.info("s2i build: %s + %s -> %s", src, builder, image)
    container = client.containers.create(builder, command=[f"{scripts}/assemble"], environment=env,
                                         network_disabled=True, labels={"io.mnistkit.s2i-build": image})
    try:
        if not container.put_archive(destination, _source_tar(src, uid, gid)):
            raise PackagingError(f"could not copy the source into {builder}:{destination}/src")
        container.start()
        output: list[str] = []
        for chunk in container.logs(stream=True, follow=True):
            for line in chunk.decode(errors="replace").splitlines():
                output.append(line)
                log.info("  | %s", line)
        code = container.wait().get("StatusCode", 1)
        if code != 0:
            tail = " | ".join(output[-5:]) or "(no output)"
            raise PackagingError(f"assemble failed with exit code {code}: {tail}")
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag:
            repository, tag = image, "latest"
        changes = [f'CMD ["{scripts}/run"]', *(f"ENV {k}={_quote(v)}" for k, v in env.items())]
        changes += [f"LABEL {_quote(k)}={_quote(v)}" for k, v in (labels or {}).items()]
        committed = container.commit(repository=repository, tag=tag, changes=changes)
    except docker.errors.APIError as e:
        raise PackagingError(f"s2i build failed: {e.explanation or e}") from None
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
    committed.reload()
    return BuildResult(image, committed.id, int(committed.attrs.get("Size", 0)), time.monotonic() - started,
                       dict(labels or {}))


def s2i_binary_build(source_dir: Path, image: str, builder: str) -> None:
    """Run the real ``s2i`` binary, when the user asks for it and it is on PATH."""
    exe = shutil.which("s2i")
    if not exe:
        raise PackagingError("--use-s2i: the s2i binary is not on PATH; drop the flag to build over the docker SDK")
    proc = subprocess.run([exe, "build", str(source_dir), builder, image], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackagingError(f"s2i build failed: {' | '.join(proc.stderr.strip().splitlines()[-3:])}")


def example_images() -> list[Path]:
    """The shipped example digits (examples/images), else the built-in golden image."""
    return sorted((REPO_ROOT / "examples" / "images").glob("*.png")) or [Path(__file__).parent / "assets" / "golden-7.png"]


def serve_image(client: Any, image: str, timeout: float = 120) -> tuple[Any, str]:
    """Run a model image on free loopback ports (host network) and wait for /health/ping.

    Returns (container, base URL); the caller removes the container. On failure the
    container is removed and ``PackagingError`` carries the end of its log."""
    from .microservice import free_port, wait_http

    http, grpc, metrics = free_port(), free_port(), free_port()
    container = client.containers.run(image, detach=True, network_mode="host", environment={
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http), "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc),
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics)}, labels={"io.mnistkit.served": image})
    url = f"http://127.0.0.1:{http}"
    try:
        wait_http(f"{url}/health/ping", timeout)
    except ServingError as e:
        container.reload()
        logs = container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
        container.remove(force=True)
        raise PackagingError(f"{image} did not serve ({e}; status {container.status}): {logs}") from None
    return container, url


def smoke_test(client: Any, image: str, source: ModelSource, images: list[Path] | None = None,
               timeout: float = 120) -> dict[str, Any]:
    """Run ``image``, wait for /health/ping, send real digits through ``mnistkit.client``
    and compare with the in-process model. Raises ``PackagingError`` on any difference."""
    import numpy as np

    from .client import Endpoint, QueryConfig, load_inputs, predict
    from .serving import MnistModel

    started = time.monotonic()
    files = images or example_images()
    try:
        container, url = serve_image(client, image, timeout)
    except PackagingError as e:
        raise PackagingError(f"smoke test: {e}") from None
    try:
        inputs = load_inputs(files)
        served = predict(inputs, QueryConfig(Endpoint(url=f"{url}/api/v1.0/predictions"), timeout=30))
        local = MnistModel(str(source.artifact)).predict(np.stack([i.pixels for i in inputs]).astype(np.float32))
        got = np.array([p.probabilities for p in served])
        diff = float(np.abs(got - local).max())
        if diff > 1e-4 or not (got.argmax(1) == local.argmax(1)).all():
            raise PackagingError(f"smoke test: the image's predictions differ from the model's (max difference {diff:.2e})")
    finally:
        container.remove(force=True)
    return {"images": len(files), "max_abs_diff": diff, "digits": [p.digit for p in served],
            "seconds": time.monotonic() - started}
