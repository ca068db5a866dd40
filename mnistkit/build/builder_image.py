"""The images mnistkit builds its model images with (and the ones the cluster files name).

``KINDS`` lists them: the s2i builders that serve with seldon-core (the v1 protocol:
``seldon-onnx``, the default, on ONNX Runtime; ``seldon-torch`` on torch) and with MLServer
(V2, its own venv and constraints: protobuf >= 5), the build tool the Argo step runs, and the
training image the Polyaxon trials run. Each is made offline:

* ``make_base_image`` — debootstrap of Debian bookworm (Python 3.11) from the Debian mirror
  this machine's apt already uses, imported as an image; no registry is contacted;
* ``make_wheelhouse`` — the kind's pinned requirements (``docker/requirements-<kind>.txt``
  under the kind's ``docker/constraints*.txt``), downloaded on the host because builds have no
  network, plus mnistkit's own wheel for the kinds that run mnistkit;
* ``build_kind`` — ``docker/Dockerfile.<kind>`` built over the docker SDK with the
  wheelhouse served on loopback, so no wheel ends up in a layer.

An image's tag is a digest of what goes into it (Dockerfile, s2i scripts, requirements,
base, and mnistkit's own code where the image holds it), so a changed input is a new
image and ``ensure_image`` never reuses a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import PackagingError
from ..files import disk_errors, os_reason
from ..imageref import ImageRef
from ..local._proc import find_exe
from ..local.dockerd import engine_errors
from ..settings import settings
from .wheel import package_digest, package_version, self_wheel

__all__ = [
    "BASE_IMAGE",
    "ImageKind",
    "KINDS",
    "debian_mirror",
    "make_base_image",
    "make_wheelhouse",
    "image_digest",
    "image_tag",
    "build_kind",
    "ensure_image",
    "provide_image",
    "serve_folder",
    "stale_images",
    "prune_images",
]

log = logging.getLogger(__name__)

BASE_IMAGE = "mnistkit/base:bookworm"


@dataclass(frozen=True)
class ImageKind:
    """One image mnistkit can build: its Dockerfile, requirements and repository."""

    name: str
    repository: str
    description: str
    with_mnistkit: bool = False  # the image runs mnistkit itself (not only what a model image needs)
    with_torch: bool = False  # adds settings().image_torch to the requirements
    constraints: str = "constraints.txt"  # the pins every pip install in the image follows
    scripts: str = "s2i"  # package folder whose bin/ holds the image's s2i scripts

    @property
    def dockerfile(self) -> str:
        return f"Dockerfile.{self.name}"

    @property
    def requirements(self) -> str:
        return f"requirements-{self.name}.txt"


KINDS: dict[str, ImageKind] = {
    k.name: k
    for k in (
        ImageKind(
            "seldon-onnx", "mnistkit/builder", "s2i builder: seldon-core 1.17.1 with ONNX Runtime, no torch (default)"
        ),
        ImageKind(
            "seldon-torch", "mnistkit/builder", "s2i builder: seldon-core 1.17.1 with CPU torch", with_torch=True
        ),
        ImageKind(
            "mlserver-onnx",
            "mnistkit/builder",
            "s2i builder for V2 images: MLServer 1.7.1 with ONNX Runtime, no torch (default for mlserver)",
            constraints="constraints-mlserver.txt",
            scripts="s2i-mlserver",
        ),
        ImageKind(
            "mlserver-torch",
            "mnistkit/builder",
            "s2i builder for V2 images: MLServer 1.7.1 with CPU torch",
            with_torch=True,
            constraints="constraints-mlserver.txt",
            scripts="s2i-mlserver",
        ),
        ImageKind(
            "tool",
            "mnistkit/build-tool",
            "runs mnistkit-build against a docker engine (the Argo step), with CPU torch to export ONNX",
            with_mnistkit=True,
            with_torch=True,
        ),
        ImageKind(
            "train",
            "mnistkit/train",
            "runs mnistkit-train (the Polyaxon trials), CPU torch",
            with_mnistkit=True,
            with_torch=True,
        ),
    )
}


def _docker_files() -> Path:
    return Path(str(files("mnistkit") / "build" / "docker"))


def _s2i_files(kind: ImageKind) -> Path:
    return Path(str(files("mnistkit") / "build" / kind.scripts / "bin"))


def debian_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror apt uses here for ``suite`` main (read from apt's sources)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in stanza.splitlines() if ":" in line)
            )
            if suite in fields.get("suites", "").split() and "main" in fields.get("components", "").split():
                candidates += fields.get("uris", "").split()
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
                if m and m.group(2) == suite and "main" in m.group(3).split():
                    candidates.append(m.group(1))
    if not candidates:
        raise PackagingError(f"no Debian mirror for {suite} main in apt's sources; cannot make the base image offline")
    return candidates[0]


def _image_exists(client: Any, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, hint: str = "") -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, errors="replace")
    except OSError as e:
        raise PackagingError(f"{what} could not start ({cmd[0]}): {os_reason(e)}") from None
    if proc.returncode != 0:
        lines = [
            x for x in (proc.stdout + proc.stderr).splitlines() if x.strip() and not x.startswith("WARNING: Location")
        ]
        detail = " | ".join(lines[-3:])[-600:] or f"exit code {proc.returncode}"
        raise PackagingError(f"{what} failed: {detail}" + (f"; {hint}" if hint else ""))


def make_base_image(client: Any, name: str = BASE_IMAGE, *, workdir: Path | None = None) -> str:
    """Debian bookworm with Python 3.11 (debootstrap, minbase), imported as ``name``."""
    if _image_exists(client, name):
        return name
    debootstrap = find_exe("debootstrap", "apt-get install debootstrap (make test/demo do this)", PackagingError)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        log.info("making the base image %s: debootstrap bookworm from %s (about a minute)", name, mirror)
        _run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(root), mirror],
            "debootstrap",
            hint=f"check that {mirror} answers and that {workdir or tempfile.gettempdir()} has ~400 MB free",
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        tar_path = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar_path), "."], "packing the base image")
        repo, _, tag = name.partition(":")
        answer = client.api.import_image_from_file(
            str(tar_path),
            repository=repo,
            tag=tag or "latest",
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/sh"]',
            ],
        )
    if not _image_exists(client, name):  # an import the engine could not do is an answer, not an exception
        said = next((line for line in str(answer).splitlines() if "error" in line.lower()), "")
        raise PackagingError(
            f"the docker engine did not import the base image {name}{': ' + said[:300] if said else ''}"
        )
    log.info("base image %s ready", name)
    return name


def _requirements(kind: ImageKind) -> str:
    text = (_docker_files() / kind.requirements).read_text()
    return text + (f"{settings().image_torch}\n" if kind.with_torch else "")


def image_digest(kind: ImageKind, base: str = BASE_IMAGE) -> str:
    """sha256 of what goes into an image of ``kind``: its Dockerfile, requirements,
    constraints, the s2i scripts, the base name, and mnistkit's code if it holds it."""
    h = hashlib.sha256(f"{kind.name}\0{base}\0{_requirements(kind)}\0".encode())
    for path in [
        _docker_files() / kind.dockerfile,
        _docker_files() / kind.constraints,
        *sorted(_s2i_files(kind).iterdir()),
    ]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    if kind.with_mnistkit:
        h.update(package_digest().encode())
    return h.hexdigest()


def image_tag(kind: ImageKind, base: str = BASE_IMAGE) -> str:
    """``<repository>:<kind>-<digest[:12]>``, e.g. ``mnistkit/builder:seldon-torch-1a2b3c4d5e6f``."""
    return f"{kind.repository}:{kind.name}-{image_digest(kind, base)[:12]}"


def make_wheelhouse(kind: ImageKind, cache_dir: Path) -> Path:
    """Download every wheel an image of ``kind`` needs into a folder keyed by its requirements."""
    requirements = _requirements(kind)
    key = hashlib.sha256((requirements + (_docker_files() / kind.constraints).read_text()).encode()).hexdigest()[:16]
    dest = Path(cache_dir) / "wheelhouse" / f"{kind.name}-{key}"
    if not (dest / ".complete").exists():
        log.info("preparing the wheelhouse for %s in %s", kind.name, dest)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        (dest / "requirements.txt").write_text(requirements)
        env = {**os.environ, "PIP_CONSTRAINT": ""}  # the image's torch is not the machine's capped one
        # pip wheel, not download: a dependency published only as a source package (Flask-OpenTracing)
        # is built into a wheel here, so the image installs wheels only
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--disable-pip-version-check",
                "-q",
                "-w",
                str(dest),
                "-c",
                str(_docker_files() / kind.constraints),
                "-r",
                str(dest / "requirements.txt"),
            ],
            f"preparing the wheelhouse for {kind.name}",
            env,
            hint="check that pip's package index answers (pip config list) and that there is space in MNISTKIT_HOME",
        )
        (dest / ".complete").write_text(key)
    for old in dest.glob("mnistkit-*.whl"):
        old.unlink()
    if kind.with_mnistkit:
        self_wheel(dest)
    return dest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 for the length of the block."""
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _context(kind: ImageKind, requirements: Path) -> bytes:
    """The build context: the Dockerfile, the requirements, the s2i scripts (never a checkout)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, path, mode in [
            ("Dockerfile", _docker_files() / kind.dockerfile, 0o644),
            ("requirements.txt", requirements, 0o644),
            *((f"s2i/bin/{p.name}", p, 0o755) for p in sorted(_s2i_files(kind).iterdir())),
        ]:
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_kind(
    client: Any, kind: ImageKind, *, cache_dir: Path, tag: str | None = None, base: str = BASE_IMAGE, force: bool = True
) -> str:
    """Make the base image and the wheelhouse if needed, then build ``docker/Dockerfile.<kind>``
    (unless, with ``force`` off, another command built it while this one waited its turn)."""
    make_base_image(client, base, workdir=cache_dir)
    tag = tag or image_tag(kind, base)
    (Path(cache_dir) / "wheelhouse").mkdir(parents=True, exist_ok=True)
    # one build of a kind at a time per home: two at once deleted each other's wheels (and the
    # mnistkit wheel one was reading), and one then built from an incomplete wheelhouse
    with open(Path(cache_dir) / "wheelhouse" / f"{kind.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _image_exists(client, tag):  # built by the command this one waited for
            return tag
        return _build_kind(client, kind, make_wheelhouse(kind, cache_dir), tag, base)


def _build_kind(client: Any, kind: ImageKind, wheels: Path, tag: str, base: str) -> str:
    import docker

    log.info("building %s from %s", tag, base)
    labels = {
        "org.opencontainers.image.version": package_version(),
        "io.mnistkit.builder.kind": kind.name,
        "io.mnistkit.builder.digest": image_digest(kind, base),
    }
    with serve_folder(wheels) as url:
        try:
            stream = client.api.build(
                fileobj=io.BytesIO(_context(kind, wheels / "requirements.txt")),
                custom_context=True,
                tag=tag,
                buildargs={"BASE_IMAGE": base, "WHEELHOUSE_URL": url},
                network_mode="host",
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
            )
            _follow_build(stream, tag)
        except docker.errors.APIError as e:
            raise PackagingError(f"building {tag} failed: {e.explanation or e}") from None
    return tag


def _follow_build(stream: Any, tag: str) -> None:
    tail: list[str] = []
    for item in stream:
        if "error" in item:
            detail = item.get("errorDetail", {}).get("message") or item["error"]
            raise PackagingError(f"building {tag} failed: {detail.strip()} | {' | '.join(tail[-3:])}")
        text = item.get("stream", "").rstrip()
        if text:
            tail.append(text)
            log.debug("%s", text)
            if text.startswith("Step "):
                log.info("  %s", text)


def provide_image(
    client: Any, kind: ImageKind | str, *, cache_dir: Path, rebuild: bool = False, also_tag: str | None = None
) -> tuple[str, int]:
    """The image of ``kind`` (built when missing, or always with ``rebuild``), also tagged
    ``also_tag`` when given: (its name, its size). A docker or disk failure is one
    ``PackagingError``."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    extra = ImageRef.parse(also_tag) if also_tag else None
    with disk_errors(PackagingError, f"building {kind.repository}"), engine_errors(f"building {kind.repository}"):
        built = (
            build_kind(client, kind, cache_dir=cache_dir)
            if rebuild
            else ensure_image(client, kind, cache_dir=cache_dir)
        )
        img = client.images.get(built)
        if extra is not None:
            img.tag(extra.repository, extra.tag_or_latest)
        return built, int(img.attrs.get("Size", 0))


def ensure_image(client: Any, kind: ImageKind | str, *, cache_dir: Path, base: str = BASE_IMAGE) -> str:
    """The image of ``kind`` for exactly these inputs, built only when it is missing."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    tag = image_tag(kind, base)
    if _image_exists(client, tag):
        return tag
    return build_kind(client, kind, cache_dir=cache_dir, tag=tag, base=base, force=False)


def stale_images(client: Any) -> list[str]:
    """Tags of mnistkit's own images that this mnistkit would not build: a builder, tool or
    training image made from older inputs (the tag's digest is not the one ``image_tag`` gives
    now). Model images, base images and other repositories' tags are never stale."""
    current = {image_tag(kind) for kind in KINDS.values()}
    repositories = {kind.repository for kind in KINDS.values()}
    ours = re.compile(rf"(?:{'|'.join(map(re.escape, KINDS))})-[0-9a-f]{{12}}")
    with engine_errors("listing images"):
        tags = [tag for image in client.images.list() for tag in image.tags]
    return sorted(
        tag
        for tag in tags
        if tag not in current and tag.rpartition(":")[0] in repositories and ours.fullmatch(tag.rpartition(":")[2])
    )


def prune_images(client: Any, *, dry_run: bool = False) -> tuple[list[str], int]:
    """Remove ``stale_images`` and then the engine's untagged (dangling) images; returns the
    tags removed and the bytes the engine reclaimed. A tag a container still uses is kept,
    with a warning; ``dry_run`` only lists what would go (untagged images as "untagged image
    ID") and the most that could free."""
    import docker

    stale = stale_images(client)
    if dry_run:  # what would go, and the most it could free (layers the images share count once each)
        with engine_errors("listing images"):
            untagged = client.images.list(filters={"dangling": True})
            size = sum(int(client.images.get(tag).attrs.get("Size", 0)) for tag in stale)
        size += sum(int(image.attrs.get("Size", 0)) for image in untagged)
        return stale + [f"untagged image {image.short_id.removeprefix('sha256:')}" for image in untagged], size
    removed = []
    with engine_errors("removing images"):
        for tag in stale:
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:  # 409: a container uses it
                log.warning("kept %s: %s", tag, str(e.explanation or e).strip()[:200])
        reclaimed = client.images.prune(filters={"dangling": True}).get("SpaceReclaimed") or 0
    return removed, int(reclaimed)
