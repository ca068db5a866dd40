"""mnistkit's own wheel, made from the running package's files.

An image must run the code that built it, so the wheel is not taken from a cache by
version: its version carries a digest of every file of the package
(``0.2.0+g<digest>``), so a changed file is a new wheel that pip cannot skip as
"already installed". It is made from the package itself, which works the same from a
checkout, an editable install or an installed wheel.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import zipfile
from importlib.resources import files
from pathlib import Path

from .._version import __version__
from ..errors import PackagingError
from ..files import temp_file

__all__ = ["package_digest", "package_version", "self_wheel"]

_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file) for every file of the installed mnistkit package."""
    root = Path(str(files("mnistkit")))
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / name
            out.append(("mnistkit/" + path.relative_to(root).as_posix(), path))
    return out


def package_digest() -> str:
    """sha256 over the names and bytes of every file of the running mnistkit package."""
    h = hashlib.sha256()
    for arcname, path in _package_files():
        data = path.read_bytes()
        h.update(f"{arcname}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def package_version(digest: str | None = None) -> str:
    """The version the wheel and the images carry: ``<version>+g<digest[:12]>``."""
    return f"{__version__}+g{(digest or package_digest())[:12]}"


def _metadata(version: str) -> tuple[str, str]:
    """(METADATA, entry_points.txt) from the installed distribution's own metadata."""
    try:
        dist = importlib.metadata.distribution("mnistkit")
    except importlib.metadata.PackageNotFoundError:
        raise PackagingError("mnistkit's distribution metadata is missing; install mnistkit with pip") from None
    lines = [
        "Metadata-Version: 2.1",
        "Name: mnistkit",
        f"Version: {version}",
        f"Summary: {dist.metadata['Summary'] or ''}",
        "License: Apache-2.0",
        "Requires-Python: >=3.11",
    ]
    lines += [f"Provides-Extra: {e}" for e in dist.metadata.get_all("Provides-Extra") or []]
    lines += [f"Requires-Dist: {r}" for r in dist.requires or []]
    groups: dict[str, list[str]] = {}
    for ep in dist.entry_points:
        groups.setdefault(ep.group, []).append(f"{ep.name} = {ep.value}")
    entry_points = "".join(f"[{g}]\n" + "".join(f"{x}\n" for x in sorted(v)) + "\n" for g, v in sorted(groups.items()))
    return "\n".join(lines) + "\n", entry_points


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def self_wheel(dest: str | os.PathLike[str]) -> Path:
    """Write (or reuse) ``mnistkit-<version>+g<digest>-py3-none-any.whl`` in ``dest``."""
    digest = package_digest()
    version = package_version(digest)
    out = Path(dest) / f"mnistkit-{version}-py3-none-any.whl"
    if out.is_file():
        return out
    Path(dest).mkdir(parents=True, exist_ok=True)
    metadata, entry_points = _metadata(version)
    info = f"mnistkit-{version}.dist-info"
    wheel = "Wheel-Version: 1.0\nGenerator: mnistkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = [(a, p.read_bytes()) for a, p in _package_files()]
    entries += [
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", wheel.encode()),
        (f"{info}/entry_points.txt", entry_points.encode()),
    ]
    record = "\n".join(_record_line(n, d) for n, d in entries) + f"\n{info}/RECORD,,\n"
    fd, tmp = temp_file(dest, ".wheel-")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in [*entries, (f"{info}/RECORD", record.encode())]:
                zinfo = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same content, same bytes
                zinfo.external_attr = 0o644 << 16
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(zinfo, data)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
