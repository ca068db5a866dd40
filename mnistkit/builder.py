"""The builder image: a Debian base made offline, a wheelhouse, and ``docker/Dockerfile``.

* ``make_base_image`` — debootstrap of Debian bookworm (Python 3.11) from the Debian mirror
  this machine's apt already uses, imported as an image. No registry is contacted.
* ``make_wheelhouse`` — the Python packages the image needs, downloaded on the host
  (CPU-only torch, seldon-core 1.17.1, mnistkit's own wheel), because builds have no network.
* ``build_builder`` — ``docker/Dockerfile`` built over the docker SDK, with the wheelhouse
  served on loopback to the build (host network), so no wheel ends up in a layer.

Everything is cached: an image that exists is reused, a wheelhouse is rebuilt only when
its inputs change.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import PackagingError

__all__ = ["BASE_IMAGE", "BUILDER_IMAGE", "TOOL_IMAGE", "debian_mirror", "make_base_image", "make_wheelhouse",
           "build_builder", "ensure_builder", "REPO_ROOT"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "mnistkit/base:bookworm"
BUILDER_IMAGE = f"mnistkit/builder:{__version__}"
TOOL_IMAGE = f"mnistkit/build-tool:{__version__}"
#: torch for the image: the CPU-only build (artifacts are safetensors, so it need not match
#: the training torch). Override with MNISTKIT_IMAGE_TORCH, e.g. where another CPU wheel is served.
IMAGE_TORCH = os.environ.get("MNISTKIT_IMAGE_TORCH", "torch==2.13.0+cpu")
IMAGE_PACKAGES = ["seldon-core==1.17.1", "setuptools<82", "safetensors", "numpy", "pillow", "click", "pyyaml", "docker"]


def debian_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror apt uses here for ``suite`` main (read from apt's sources)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(
                (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in stanza.splitlines() if ":" in line)
            )
            suites = fields.get("suites", "").split()
            if suite in suites and "main" in fields.get("components", "").split():
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


def make_base_image(client: Any, name: str = BASE_IMAGE, *, workdir: Path | None = None) -> str:
    """Debian bookworm with Python 3.11 (debootstrap, minbase), imported as ``name``."""
    if _image_exists(client, name):
        return name
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise PackagingError("debootstrap is not installed; apt-get install debootstrap (make test/demo do this)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        log.info("making the base image %s: debootstrap bookworm from %s (about a minute)", name, mirror)
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(root), mirror],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise PackagingError(f"debootstrap failed: {tail}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        tar_path = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar_path), "."], check=True)
        repo, _, tag = name.partition(":")
        client.api.import_image_from_file(
            str(tar_path), repository=repo, tag=tag or "latest",
            changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                     'CMD ["/bin/sh"]'],
        )
    log.info("base image %s ready", name)
    return name


def _constraints(dest: Path) -> Path:
    # the project's lock, minus the training torch (the image takes the CPU build)
    lock = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    keep = [line for line in lock if not re.match(r"(torch|torchvision|nvidia-|cuda-|triton)", line.lower())]
    path = dest / "constraints.txt"
    path.write_text("\n".join(keep) + "\n")
    return path


def make_wheelhouse(dest: Path) -> Path:
    """Download every wheel the builder image needs into ``dest`` (reused when unchanged)."""
    dest = Path(dest)
    sources = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "requirements.lock", *sorted((REPO_ROOT / "mnistkit").rglob("*.py"))]
    h = hashlib.sha256(IMAGE_TORCH.encode() + json.dumps(IMAGE_PACKAGES).encode())
    for src in sources:
        h.update(src.read_bytes())
    stamp = dest / ".stamp"
    if stamp.exists() and stamp.read_text() == h.hexdigest():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("mnistkit-*.whl"):
        old.unlink()
    log.info("preparing the wheelhouse in %s", dest)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {**os.environ, "PIP_CONSTRAINT": ""}  # the image's torch is not the machine's capped one
    steps = [
        [*pip, "wheel", "--no-deps", "-w", str(dest), str(REPO_ROOT)],
        [*pip, "download", "-d", str(dest), "--only-binary=:all:", IMAGE_TORCH],
        [*pip, "download", "-d", str(dest), "-c", str(_constraints(dest)), *IMAGE_PACKAGES],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("WARNING: Location")]
            raise PackagingError(f"preparing the wheelhouse failed: {' | '.join(lines[-2:])}")
    stamp.write_text(h.hexdigest())
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


def _context_tar(dockerfile: str) -> Path:
    # the build context: the Dockerfile and s2i/bin only (never the whole repository)
    fd, path = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    with tarfile.open(path, "w") as tar:
        tar.add(REPO_ROOT / "docker" / dockerfile, arcname="Dockerfile")
        tar.add(REPO_ROOT / "s2i" / "bin", arcname="s2i/bin")
    return Path(path)


def build_image(client: Any, dockerfile: str, tag: str, buildargs: dict[str, str]) -> str:
    """Build ``docker/<dockerfile>`` over the SDK (host network), streaming its log."""
    ctx = _context_tar(dockerfile)
    try:
        with open(ctx, "rb") as f:
            stream = client.api.build(fileobj=f, custom_context=True, tag=tag, buildargs=buildargs, network_mode="host",
                                      rm=True, forcerm=True, decode=True, labels={"org.opencontainers.image.version": __version__})
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
    finally:
        ctx.unlink(missing_ok=True)
    return tag


def build_builder(client: Any, *, cache_dir: Path, tag: str = BUILDER_IMAGE, base: str = BASE_IMAGE,
                  dockerfile: str = "Dockerfile") -> str:
    """Make the base image and wheelhouse if needed, then build ``docker/<dockerfile>``."""
    make_base_image(client, base, workdir=cache_dir)
    wheels = make_wheelhouse(cache_dir / "wheelhouse")
    log.info("building %s from %s", tag, base)
    with serve_folder(wheels) as url:
        return build_image(client, dockerfile, tag, {"BASE_IMAGE": base, "WHEELHOUSE_URL": url})


def ensure_builder(client: Any, *, cache_dir: Path, tag: str = BUILDER_IMAGE, dockerfile: str = "Dockerfile") -> str:
    """The builder (or, with ``Dockerfile.tool``, the build-tool) image, built only when missing."""
    if _image_exists(client, tag):
        return tag
    return build_builder(client, cache_dir=cache_dir, tag=tag, dockerfile=dockerfile)
