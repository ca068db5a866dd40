"""MNIST files -> tensors, and the one preprocessing shared by training and serving.

The data set is the four canonical IDX files. The repository ships them gzipped under
``examples/data/MNIST/raw/`` (the default folder, relative to the working directory, as
``make`` and the tests run); they are decompressed once and their md5 is checked (then
remembered), and a plain IDX reader loads them. torchvision is not needed. The whole
set is then held in memory as one uint8 tensor: batches are slices, not per-sample
PIL transforms.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError
from .files import disk_errors, os_reason, temp_file

if TYPE_CHECKING:  # torch loads only where tensors are made, so packaging stays light
    import torch

__all__ = [
    "MEAN",
    "STD",
    "MNISTData",
    "preprocess",
    "preprocess_numpy",
    "resolve_data_dir",
    "check_mnist",
    "load_mnist",
    "read_idx",
]

log = logging.getLogger(__name__)

#: Mean and standard deviation of MNIST training pixels scaled to 0..1.
MEAN = 0.1307
STD = 0.3081
#: Raw MNIST pixels are 0..255, white digit on black.
PIXEL_MAX = 255.0

# Uncompressed md5 sums of the canonical files (the same torchvision checks).
_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47040016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7840016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10008),
}

_ENV = "MNISTKIT_DATA_DIR"
#: Where the repository keeps MNIST, relative to the working directory.
DEFAULT_DATA_DIR = Path("examples") / "data"


def preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """Raw pixel intensities 0..255 (any numeric dtype) -> normalised float32.

    Accepts ``(28, 28)``, ``(n, 28, 28)`` or ``(n, 1, 28, 28)``; returns
    ``(n, 1, 28, 28)``. This is the only input transform in mnistkit: training and the
    Seldon model class both call it, so they cannot drift apart (the 2018 pipeline
    forgot the division by 255 at serving time).
    """
    import torch

    x = pixels.to(torch.float32)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x / PIXEL_MAX - MEAN) / STD


def preprocess_numpy(pixels: np.ndarray) -> np.ndarray:
    """``preprocess`` in numpy, for servers without torch: the same constants in the same
    order (float32, /255, -mean, /std), so the result equals torch's bit for bit (tested).

    Accepts ``(28, 28)``, ``(n, 28, 28)`` or ``(n, 1, 28, 28)``; returns ``(n, 1, 28, 28)`` float32.
    """
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    return (x / np.float32(PIXEL_MAX) - np.float32(MEAN)) / np.float32(STD)


@dataclass(frozen=True)
class MNISTData:
    """The whole data set in memory: raw uint8 images and int64 labels."""

    train_images: "torch.Tensor"  # (60000, 28, 28) uint8
    train_labels: "torch.Tensor"  # (60000,) int64
    test_images: "torch.Tensor"  # (10000, 28, 28) uint8
    test_labels: "torch.Tensor"  # (10000,) int64


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where to look for MNIST: the argument, else ``$MNISTKIT_DATA_DIR``, else
    ``examples/data`` under the working directory (the repository's copy)."""
    from .settings import settings

    return Path(data_dir or settings().data_dir or DEFAULT_DATA_DIR)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "mnistkit"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _prepare_raw(root: Path) -> Path:
    """Return a torchvision root whose ``MNIST/raw`` holds the four verified files."""
    raw = root / "MNIST" / "raw"
    if all(_ok(raw / name, name) for name in _FILES):
        return root
    gz = {name: raw / f"{name}.gz" for name in _FILES}
    missing = [str(p) for name, p in gz.items() if not p.exists() and not (raw / name).exists()]
    if missing:
        raise DataError(
            f"MNIST files not found in {raw} (missing {', '.join(Path(m).name for m in missing)}); "
            f"point --data-dir or ${_ENV} at a folder holding MNIST/raw/, "
            "or pass --download where the network allows"
        )
    # Decompress beside the .gz files when that folder is writable, else into a cache.
    target_root = root if _writable(raw) else _cache_root() / "data"
    target = target_root / "MNIST" / "raw"
    for name in _FILES:
        out = target / name
        if _ok(out, name):
            continue
        src = raw / name if (raw / name).exists() else gz[name]
        if src.suffix != ".gz":
            raise DataError(f"{src} is corrupt (md5 or size mismatch); replace it with the original file")
        with disk_errors(DataError, f"cannot decompress MNIST into {target} (nor beside {src})"):
            target.mkdir(parents=True, exist_ok=True)
            fd, tmp = temp_file(target, f".{name}.")
        try:
            _gunzip(src, fd, target)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            os.unlink(tmp)
            raise DataError(f"{src} is corrupt or truncated ({e}); replace it with the original file") from None
        except DataError:
            os.unlink(tmp)
            raise
        if not _ok(Path(tmp), name):
            os.unlink(tmp)
            raise DataError(f"{src} is corrupt (md5 of its content is not MNIST's); replace it with the original file")
        os.replace(tmp, out)
        log.debug("decompressed %s -> %s", src, out)
    return target_root


def _gunzip(src: Path, fd: int, target: Path) -> None:
    """``src`` decompressed into ``fd``: a failed read is the source's fault (OSError and the
    gzip errors, for the caller), a failed write the disk's (``DataError`` saying why)."""
    with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while chunk := fin.read(1 << 20):
            try:
                fout.write(chunk)
            except OSError as e:
                raise DataError(f"cannot decompress {src} into {target}: {os_reason(e)}") from None


def _ok(path: Path, name: str | None = None) -> bool:
    """True when ``path`` holds the canonical content of MNIST file ``name``.

    The md5 is computed once per file and remembered beside it (keyed by size and mtime),
    so later runs only stat the files."""
    name = name or path.name
    md5, size = _FILES[name]
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != size:
        return False
    stamp = path.parent / f".{name}.verified"
    key = f"{md5} {st.st_size} {st.st_mtime_ns}"
    try:
        if stamp.read_text() == key:
            return True
    except OSError:
        pass
    if _md5(path) != md5:
        return False
    try:
        stamp.write_text(key)
    except OSError:
        pass  # a read-only data folder: verify again next time
    return True


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: big-endian magic, dims, then uint8 data) as an array."""
    data = path.read_bytes()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of bytes; replace it with the original MNIST file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four verified MNIST files (decompressed if need be), without
    loading them; ``DataError`` saying what to do when they are missing or corrupt. A search
    calls it once before its first trial, instead of every trial failing on the same files."""
    return _prepare_raw(resolve_data_dir(data_dir)) / "MNIST" / "raw"


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = False) -> MNISTData:
    """Load and verify the whole MNIST set into memory.

    Raises ``DataError`` with what to do when files are missing or corrupt.
    """
    import torch

    root = resolve_data_dir(data_dir)
    if download:
        _download(root)
    raw = _prepare_raw(root) / "MNIST" / "raw"
    arrays = {name: read_idx(raw / name) for name in _FILES}
    return MNISTData(
        train_images=torch.from_numpy(arrays["train-images-idx3-ubyte"].copy()),
        train_labels=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"].copy()),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
    )


def _download(root: Path) -> None:
    """Fetch MNIST with torchvision (an optional extra; needs network)."""
    try:
        from torchvision import datasets
    except ImportError:
        raise DataError(
            "--download needs torchvision (pip install torchvision); or put the four MNIST files "
            f"into {root / 'MNIST' / 'raw'}"
        ) from None
    try:
        datasets.MNIST(str(root), train=True, download=True)
        datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"could not download MNIST into {root}: {e}") from None
