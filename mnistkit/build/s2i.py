"""The s2i source folder, and the s2i contract carried out over the docker SDK.

What ``s2i build SRC BUILDER IMAGE`` does, step by step: read the builder's
``io.openshift.s2i.scripts-url`` and ``io.openshift.s2i.destination`` labels; create a
container from the builder running ``<scripts>/assemble`` with the variables of
``.s2i/environment``; stream the source into ``<destination>/src``; start it and stream its
log; fail with that log when it exits non-zero; commit the result with
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
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PackagingError
from ..imageref import ImageRef
from .source import ModelSource
from .wheel import package_version, self_wheel

__all__ = [
    "BuildResult",
    "BuilderContract",
    "S2I_ENVIRONMENT",
    "make_source_folder",
    "write_source_folder",
    "read_s2i_environment",
    "s2i_build",
    "s2i_binary_build",
    "image_labels",
]

log = logging.getLogger(__name__)

S2I_ENVIRONMENT = {"MODEL_NAME": "MnistModel", "API_TYPE": "REST", "SERVICE_TYPE": "MODEL", "PERSISTENCE": "0"}

MODEL_MODULE = '''"""Seldon Core entry point written by mnistkit-build: MODEL_NAME={name}."""
from mnistkit.serving import MnistModel as {name}

__all__ = ["{name}"]
'''


@dataclass(frozen=True)
class BuildResult:
    image: str
    image_id: str
    size: int
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)


def make_source_folder(
    source: ModelSource,
    dest: str | os.PathLike[str],
    *,
    model_name: str = "MnistModel",
    wheel_cache: Path | None = None,
) -> Path:
    """Write the s2i source folder: the model module, ``model/``, ``requirements.txt``,
    ``.s2i/environment`` and the wheel of the running mnistkit (see ``write_source_folder``)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model_name):
        raise PackagingError(f"model name {model_name!r} must be a Python identifier (it names MODEL_NAME.py)")
    return write_source_folder(
        source,
        dest,
        environment={**S2I_ENVIRONMENT, "MODEL_NAME": model_name},
        files={f"{model_name}.py": MODEL_MODULE.format(name=model_name)},
        wheel_cache=wheel_cache,
    )


def write_source_folder(
    source: ModelSource,
    dest: str | os.PathLike[str],
    *,
    environment: dict[str, str],
    files: dict[str, str],
    wheel_cache: Path | None = None,
) -> Path:
    """What every mnistkit s2i source folder holds — ``model/`` (the verified files, copied, never
    linked), mnistkit's own wheel with a ``requirements.txt`` naming it, ``.s2i/environment`` —
    plus ``files`` (name: text). Written into a temporary folder and renamed, so ``dest`` is
    either complete or absent; an existing non-empty ``dest`` is refused."""
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackagingError(f"{out} already exists and is not empty; choose another folder")
    wheel = self_wheel(wheel_cache or Path(tempfile.gettempdir()) / "mnistkit-wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        (tmp / "model").mkdir()
        for name in ["manifest.json", *source.manifest["files"]]:
            shutil.copyfile(source.artifact / name, tmp / "model" / name)  # contents only, never a link
        (tmp / "wheels").mkdir()
        shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
        (tmp / "requirements.txt").write_text(
            "# exactly the mnistkit that built this image; its dependencies come with the builder image\n"
            f"./wheels/{wheel.name}\n"
        )
        (tmp / ".s2i").mkdir()
        (tmp / ".s2i" / "environment").write_text("".join(f"{k}={v}\n" for k, v in environment.items()))
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


def image_labels(source: ModelSource, image: str, builder: str, builder_digest: str = "") -> dict[str, str]:
    """OCI annotations plus the model's provenance and the code that built the image."""
    m = source.manifest
    labels = {
        "org.opencontainers.image.title": "mnistkit-mnist",
        "org.opencontainers.image.description": "MNIST digit classifier served by Seldon Core (mnistkit)",
        "org.opencontainers.image.version": source.sha256[:12],
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.ref.name": image,
        "org.opencontainers.image.base.name": builder,
        "io.mnistkit.version": package_version(),
        "io.mnistkit.builder.digest": builder_digest,
        "io.mnistkit.artifact.sha256": source.sha256,
        "io.mnistkit.run.id": source.run_id,
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

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.issym() or info.islnk():
            return None  # a link would point at the build host's files
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(source_dir, arcname="src", filter=owner)
    return buf.getvalue()


@dataclass(frozen=True)
class BuilderContract:
    """What an s2i builder image declares: where its scripts are, where source goes, its user."""

    image: str
    scripts: str
    destination: str
    uid: int
    gid: int

    @classmethod
    def read(cls, client: Any, builder: str) -> "BuilderContract":
        import docker

        try:
            b = client.images.get(builder)
        except docker.errors.ImageNotFound:
            raise PackagingError(f"builder image {builder} not found; build it with 'mnistkit-build builder'") from None
        except docker.errors.DockerException as e:
            raise PackagingError(f"cannot talk to the docker engine: {type(e).__name__}; is it running?") from None
        labels = b.labels or {}
        url = labels.get("io.openshift.s2i.scripts-url")
        if not url:
            raise PackagingError(f"{builder} is not an s2i builder (no io.openshift.s2i.scripts-url label)")
        if not url.startswith("image://"):
            raise PackagingError(f"{builder} keeps its s2i scripts at {url}; only image:// scripts are supported")
        name, _, group = ((b.attrs.get("Config") or {}).get("User") or "0").partition(":")
        return cls(
            builder,
            url[len("image://") :].rstrip("/"),
            labels.get("io.openshift.s2i.destination", "/tmp").rstrip("/") or "/tmp",
            int(name) if name.isdigit() else 0,
            int(group) if group.isdigit() else 0,
        )


def _assemble(container: Any, contract: BuilderContract, source_dir: Path) -> None:
    """Copy the source in, run assemble, stream its log; raise with its tail on failure."""
    if not container.put_archive(contract.destination, _source_tar(source_dir, contract.uid, contract.gid)):
        raise PackagingError(f"could not copy the source into {contract.image}:{contract.destination}/src")
    container.start()
    output: list[str] = []
    for chunk in container.logs(stream=True, follow=True):
        for line in chunk.decode(errors="replace").splitlines():
            output.append(line)
            log.info("  | %s", line)
    code = container.wait().get("StatusCode", 1)
    if code != 0:
        raise PackagingError(f"assemble failed with exit code {code}: {' | '.join(output[-5:]) or '(no output)'}")


def s2i_build(
    client: Any, source_dir: str | os.PathLike[str], image: str, *, builder: str, labels: dict[str, str] | None = None
) -> BuildResult:
    """Build ``image`` from ``source_dir`` with ``builder`` by the s2i contract."""
    import docker

    started = time.monotonic()
    src, ref = Path(source_dir), ImageRef.parse(image)
    contract = BuilderContract.read(client, builder)
    env = read_s2i_environment(src)
    log.info("s2i build: %s + %s -> %s", src, builder, image)
    try:
        container = client.containers.create(
            builder,
            command=[f"{contract.scripts}/assemble"],
            environment=env,
            network_disabled=True,
            labels={"io.mnistkit.s2i-build": image},
        )
    except docker.errors.APIError as e:
        raise PackagingError(f"s2i build failed: {e.explanation or e}") from None
    try:
        _assemble(container, contract, src)
        env = {**env, "MNISTKIT_BUILDER_DIGEST": (labels or {}).get("io.mnistkit.builder.digest", "")}
        changes = [f'CMD ["{contract.scripts}/run"]', *(f"ENV {k}={_quote(v)}" for k, v in env.items())]
        changes += [f"LABEL {_quote(k)}={_quote(v)}" for k, v in (labels or {}).items()]
        committed = container.commit(repository=ref.repository, tag=ref.tag_or_latest, changes=changes)
    except docker.errors.APIError as e:
        raise PackagingError(f"s2i build failed: {e.explanation or e}") from None
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
    committed.reload()
    return BuildResult(
        image, committed.id, int(committed.attrs.get("Size", 0)), time.monotonic() - started, dict(labels or {})
    )


def s2i_binary_build(source_dir: Path, image: str, builder: str) -> None:
    """Run the real ``s2i`` binary, when the user asks for it and it is on PATH."""
    exe = shutil.which("s2i")
    if not exe:
        raise PackagingError("--use-s2i: the s2i binary is not on PATH; drop the flag to build over the docker SDK")
    proc = subprocess.run([exe, "build", str(source_dir), builder, image], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackagingError(f"s2i build failed: {' | '.join(proc.stderr.strip().splitlines()[-3:])}")
