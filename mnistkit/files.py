"""Files written safely: atomic replacement, and a failed write as one clear error.

Every file a run, a search or an artifact records (``config.json``, ``result.json``,
``trials.json``, the manifest, the weights) is written to a dot-file beside its target,
flushed to disk and renamed over it, so a crash or ``kill -9`` leaves the old version or the
new one, never half of one; readers ignore dot-files. An ``OSError`` (a full disk, a
read-only file system, no permission) becomes the calling stage's ``MnistkitError`` with a
hint, at the place it happens.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import MnistkitError

__all__ = ["creation_mode", "disk_errors", "os_reason", "temp_file", "write_atomic", "write_failed"]

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a writable folder",
    errno.EPERM: "permission denied: choose a writable folder",
}


def os_reason(e: OSError) -> str:
    """What went wrong and what to do, in one line (never the traceback)."""
    hint = _HINTS.get(e.errno or 0)
    if hint:
        return hint
    text = e.strerror or str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


@contextmanager
def disk_errors(error: type[MnistkitError], what: str) -> Iterator[None]:
    """An ``OSError`` inside the block as one ``error``: ``<what> (<file>): <reason>``."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise error(f"{what}{where}: {os_reason(e)}") from None


def write_failed(e: OSError, path: str | os.PathLike[str], error: type[MnistkitError]) -> MnistkitError:
    """``error`` saying that writing ``path`` failed, and why."""
    return error(f"cannot write {path}: {os_reason(e)}")


def creation_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask. ``mkstemp`` makes 0o600,
    which nobody else can read: not the other user a pod or an image runs as (Seldon's
    operator runs model containers as uid 8888, OpenShift as an arbitrary one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back
    os.umask(mask)
    return 0o666 & ~mask


def temp_file(folder: str | os.PathLike[str], prefix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder``, with ``creation_mode()`` instead of its 0o600:
    (open file descriptor, path)."""
    fd, path = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        os.fchmod(fd, creation_mode())
    except OSError:  # a volume that refuses chmod (vfat, some CIFS and CSI mounts): keep 0o600
        pass
    return fd, path


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, error: type[MnistkitError] = MnistkitError
) -> None:
    """Replace ``path`` with ``data`` atomically (dot-file, fsync, rename); ``error`` on failure."""
    target = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = temp_file(target.parent, f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise write_failed(e, target, error) from None
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
