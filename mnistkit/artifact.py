"""The saved model: safetensors weights + a JSON manifest with checksums; safe loading.

Layout of an artifact folder::

    model/
      manifest.json                       what, from where, checksums of every file
      weights-<sha256[:16]>.safetensors   the network's state_dict
      (any other file the manifest's "files" lists, e.g. an ONNX export)

The weights file is content-addressed and the manifest is replaced atomically, so a
crash mid-save leaves the previous model loadable (the dot-files an interrupted write
leaves are ignored, and so is a weights file named by its own content's sha256 that the
manifest does not list yet: the new weights of a save killed before its manifest). The artifact's identity (``sha256``) is the sha256 of
``manifest.json``, which pins every file's sha256, and the manifest carries the sha256 of
its own content (``checksum``), so a flipped byte anywhere is caught.

Loading trusts nothing in the folder: the folder and every file in it must be plain (no
symbolic links), every file must be listed in the manifest under a plain name and match
its checksum, nothing unlisted may sit beside them, and the safetensors header is checked
(sizes, offsets, at most ``MAX_ELEMENTS`` values) before a byte of tensor data is touched.
An image's copy of the folder may also hold ``model.onnx`` (see ``mnistkit.export``): the
manifest lists it in ``files`` like the weights and ties it to them in its ``onnx`` record.
Nothing here ever unpickles: a pickle is refused, and a 2018 ``model.dat`` is imported
with ``torch.load(weights_only=True)``, which refuses a pickle that would run code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .data import MEAN, PIXEL_MAX, STD
from .errors import ArtifactError
from .files import os_reason, write_atomic

if TYPE_CHECKING:  # torch is imported only by the functions that make tensors
    import torch

    from .network import Network

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "MAX_ELEMENTS",
    "Model",
    "save_artifact",
    "load_model",
    "read_manifest",
    "import_legacy",
    "artifact_dir",
    "sha256_file",
    "manifest_checksum",
    "ONNX_FILE",
    "add_onnx",
    "onnx_record",
]

FORMAT = "mnistkit-artifact/2"
#: /1 is /2 without the manifest's own checksum (mnistkit 0.2 and earlier); still read.
READABLE_FORMATS = ("mnistkit-artifact/1", FORMAT)
MANIFEST = "manifest.json"
PREPROCESSING = {
    "scale": PIXEL_MAX,
    "mean": MEAN,
    "std": STD,
    "layout": "NCHW",
    "input": "raw pixels 0..255, white on black",
}
#: At most this many values in one weights file (the seed network has 21,840).
MAX_ELEMENTS = 1 << 24
MAX_MANIFEST_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_LEGACY_BYTES = 64 << 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # no separators, no dot-files, no '..'


@dataclass(frozen=True)
class Model:
    """A verified, loaded artifact: the network in eval mode and what the manifest says."""

    network: "Network"
    manifest: dict[str, Any]
    sha256: str
    path: Path


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's content without its ``checksum`` (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(path, data, error=ArtifactError)


def save_artifact(
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, "torch.Tensor"],
    *,
    train_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
) -> str:
    """Write an artifact into ``directory`` atomically; return its sha256."""
    import torch
    from safetensors.torch import save

    from .network import NETWORK_CONFIG

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create {out}: {os_reason(e)}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    blob = save(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    weights = f"weights-{digest[:16]}.safetensors"
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "weights": weights,
        "files": {weights: digest},
        "network": NETWORK_CONFIG,
        "preprocessing": PREPROCESSING,
        "train_config": dict(train_config or {}),
        "metrics": dict(metrics or {}),
        "run": dict(run or {}),
        # no wall-clock time: the same training gives the same bytes, hence the same sha256
        "versions": {"mnistkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    manifest["checksum"] = manifest_checksum(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    _commit(out, weights, blob, text)
    return hashlib.sha256(text).hexdigest()


def _commit(out: Path, weights: str, blob: bytes, manifest: bytes) -> None:
    """Weights first, then the manifest that names them; then what the old manifest named.
    A failure in between removes the new weights, so the previous model stays loadable."""
    created = not (out / weights).exists()
    try:
        if created:
            _atomic_write(out / weights, blob)
        _atomic_write(out / MANIFEST, manifest)
    except BaseException:
        if created:
            (out / weights).unlink(missing_ok=True)
        raise
    # earlier weights, an ONNX export of earlier weights, and dot-files of interrupted writes
    for stale in out.iterdir():
        old_weights = stale.name.startswith("weights-") and stale.name.endswith(".safetensors")
        old = old_weights or stale.name == ONNX_FILE or stale.name.startswith((f".{MANIFEST}.", ".weights-"))
        if stale.name != weights and old:
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save's zip container, or a raw pickle stream (protocol 2+ starts with 0x80)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _pickle_refusal(p: Path) -> ArtifactError:
    return ArtifactError(
        f"{p} is a pickle (torch.save), not safetensors; mnistkit never unpickles models. "
        "Convert a 2018 state_dict with 'mnistkit-train --import-legacy FILE'"
    )


def artifact_dir(path: str | os.PathLike[str]) -> Path:
    """Find the artifact folder for a path: the folder itself, its ``manifest.json``,
    or a run folder holding ``model/``. Raises ``ArtifactError`` otherwise."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise ArtifactError(f"no model at {p}; pass a run folder, a model folder or its manifest.json")
    if p.is_file() and p.name != MANIFEST:
        with open(p, "rb") as f:
            if _looks_like_pickle(f.read(4)):
                raise _pickle_refusal(p)
        raise ArtifactError(f"{p} is not a mnistkit model; pass a run folder, a model folder or its manifest.json")
    for candidate in (p.parent,) if p.name == MANIFEST and not p.is_dir() else (p, p / "model"):
        if (candidate / MANIFEST).exists() or (candidate / MANIFEST).is_symlink():
            if candidate.is_symlink():
                raise ArtifactError(f"{candidate} is a symbolic link; a model folder must be a plain folder")
            return candidate
    raise ArtifactError(f"no {MANIFEST} in {p} or {p / 'model'}; is this a mnistkit run folder?")


class _Folder:
    """An artifact folder opened once; files are read through it, never following a link."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ArtifactError(f"cannot open the model folder {path}: {os_reason(e)}") from None

    def __enter__(self) -> "_Folder":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def open(self, name: str) -> int:
        """A descriptor of the plain file ``name`` (a link, a folder, a device: refused)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        except FileNotFoundError:
            raise ArtifactError(f"{self.path / name} is missing; the artifact is incomplete") from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # the name is a symbolic link
                raise ArtifactError(f"{self.path / name} is a symbolic link; a model folder holds plain files only")
            raise ArtifactError(f"cannot read {self.path / name}: {os_reason(e)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArtifactError(f"{self.path / name} is not a plain file; a model folder holds plain files only")
        return fd

    def read(self, name: str, limit: int) -> bytes:
        fd = self.open(name)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_size > limit:  # refused before a byte is read
                raise ArtifactError(f"{self.path / name} is larger than {limit} bytes; it is not a mnistkit file")
            data = f.read(limit + 1)  # bounded also if the file grows after the check
            if len(data) > limit:
                raise ArtifactError(f"{self.path / name} is larger than {limit} bytes; it is not a mnistkit file")
            return data

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with os.fdopen(self.open(name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def extra_entries(self, listed: set[str]) -> list[str]:
        """Names in the folder that the manifest does not list (dot-files are ignored)."""
        return sorted(n for n in os.listdir(self.fd) if not n.startswith(".") and n not in listed)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def _parse_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ArtifactError(f"{where} is not UTF-8 text; the artifact is damaged") from None
    except ValueError as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ArtifactError(f"{where} is not valid JSON ({reason}); the artifact is damaged") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a mnistkit manifest (not a JSON object)")
    if manifest.get("format") not in READABLE_FORMATS:
        raise ArtifactError(f"{where.parent} is not a mnistkit artifact (format {manifest.get('format')!r})")
    if "checksum" in manifest or manifest["format"] != READABLE_FORMATS[0]:
        if manifest.get("checksum") != manifest_checksum(manifest):
            raise ArtifactError(f"{where} does not match its own checksum: it was modified; refusing to load it")
    return manifest


def _check_fields(manifest: dict[str, Any], where: Path) -> tuple[str, dict[str, str]]:
    """(weights file name, files map) once every field has the type and form it must have."""
    files, weights = manifest.get("files"), manifest.get("weights")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{where} lists no files; the artifact is damaged")
    for name, digest in files.items():
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name == MANIFEST:
            raise ArtifactError(
                f"{where} lists the file {name!r}, which is not a plain name inside the model folder; refusing it"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"{where} gives {name!r} a checksum that is not a sha256 hex digest; refusing it")
    if not isinstance(weights, str) or weights not in files or not weights.endswith(".safetensors"):
        raise ArtifactError(f"{where} does not name a listed .safetensors weights file; the artifact is damaged")
    for key in ("network", "preprocessing", "train_config", "metrics", "run", "versions"):
        if not isinstance(manifest.get(key, {}), dict):
            raise ArtifactError(f"{where}: {key!r} must be a JSON object; the artifact is damaged")
    if manifest.get("preprocessing", PREPROCESSING) != PREPROCESSING:
        raise ArtifactError(
            f"{where} declares a preprocessing that is not mnistkit's ({PREPROCESSING['input']}, "
            f"/{PIXEL_MAX:g}, mean {MEAN}, std {STD}); serving would not reproduce its accuracy"
        )
    return weights, files


def _safetensors_header(data: bytes, size: int, where: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's first bytes (``data``: at least the
    header) and its ``size``; refuses sizes, offsets or element counts that do not add up."""
    if _looks_like_pickle(data[:4]):
        raise _pickle_refusal(where)
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= n <= MAX_HEADER_BYTES or 8 + n > size:
        raise ArtifactError(f"{where} is not a safetensors file (its header claims {n} bytes of {size})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError:
        header = None
    if not isinstance(header, dict):  # checked with if, not assert: python -O drops asserts
        raise ArtifactError(f"{where} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    tensors, spans, total = {}, [], 0
    for name, t in header.items():
        try:
            dtype, shape, (begin, end) = t["dtype"], tuple(t["shape"]), t["data_offsets"]
            valid = (
                dtype in _DTYPE_BYTES
                and len(shape) <= 8
                and all(type(x) is int and x >= 0 for x in (*shape, begin, end))
            )
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise ArtifactError(f"{where}: tensor {name!r} has no valid dtype, shape and offsets")
        elements = math.prod(shape)
        total += elements
        if total > MAX_ELEMENTS:
            raise ArtifactError(
                f"{where} claims tensors of more than {MAX_ELEMENTS} values ({name!r}: shape {list(shape)}); refused"
            )
        if end - begin != elements * _DTYPE_BYTES[dtype]:
            raise ArtifactError(f"{where}: tensor {name!r} claims {end - begin} bytes for shape {list(shape)}")
        tensors[name] = (dtype, shape)
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ArtifactError(f"{where}: the tensors' byte ranges overlap or leave gaps; the file is damaged")
        position = end
    if 8 + n + position != size:
        raise ArtifactError(f"{where} is {size} bytes but its header accounts for {8 + n + position}")
    return tensors


_WEIGHTS_NAME = re.compile(r"weights-([0-9a-f]{16})\.safetensors")


def _orphan_weights(d: "_Folder", name: str) -> bool:
    """Whether ``name`` is a weights file a save wrote just before it was killed (before its
    manifest replaced the old one): named by its own content's sha256, so it is exactly such a
    file, and it is never read as a model. Any other unlisted file is refused."""
    m = _WEIGHTS_NAME.fullmatch(name)
    return m is not None and d.sha256(name)[:16] == m.group(1)


def _verify(folder: Path) -> tuple[dict[str, Any], str, bytes]:
    """(manifest, artifact sha256, weights bytes) of a folder whose every file checks out."""
    with _Folder(folder) as d:
        raw = d.read(MANIFEST, MAX_MANIFEST_BYTES)
        manifest = _parse_manifest(raw, folder / MANIFEST)
        weights, files = _check_fields(manifest, folder / MANIFEST)
        # the weights are read once, checked, and these very bytes are what load_model loads
        blob = d.read(weights, 8 + MAX_HEADER_BYTES + MAX_ELEMENTS * max(_DTYPE_BYTES.values()))
        digests = {weights: hashlib.sha256(blob).hexdigest()}
        for name, want in files.items():
            if (digests.get(name) or d.sha256(name)) != want:
                raise ArtifactError(
                    f"{folder / name} does not match its sha256 in {MANIFEST}: the artifact was modified; "
                    "refusing to load it"
                )
        extra = [n for n in d.extra_entries({MANIFEST, *files}) if not _orphan_weights(d, n)]
        if extra:
            raise ArtifactError(
                f"{folder / extra[0]} is not listed in {MANIFEST}; a model folder holds only what its manifest "
                "lists (remove it, or save the model again)"
            )
    _safetensors_header(blob, len(blob), folder / weights)
    return manifest, hashlib.sha256(raw).hexdigest(), blob


def read_manifest(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str, Path]:
    """Verify an artifact (folder, manifest, every file, the weights' header) without torch.

    Returns (manifest, artifact sha256, folder)."""
    folder = artifact_dir(path)
    manifest, digest, _ = _verify(folder)
    return manifest, digest, folder


def _fit_network(net: "Network", tensors: dict[str, tuple[str, tuple[int, ...]]], where: Path) -> None:
    """Refuse weights whose names or shapes are not the seed network's, before loading them."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = [f"missing {k}" for k in want if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in want]
    problems += [
        f"{k} has shape {list(tensors[k][1])}, not {list(s)}" for k, s in want.items() if tensors.get(k, (0, s))[1] != s
    ]
    if problems:
        raise ArtifactError(f"{where} holds weights that do not fit the seed network: {'; '.join(problems[:3])}")


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """Load a verified artifact. Refuses pickles, links, unlisted, missing or modified files,
    and weights that do not fit the network — each with one ``ArtifactError``."""
    from safetensors.torch import load

    from .network import Network

    folder = artifact_dir(path)
    manifest, digest, blob = _verify(folder)
    where = folder / manifest["weights"]
    net = Network()
    _fit_network(net, _safetensors_header(blob, len(blob), where), where)
    try:
        net.load_state_dict(load(blob))  # the bytes that were verified, not the file again
    except Exception as e:  # safetensors' own error type differs between versions
        raise ArtifactError(f"{where} could not be read as safetensors: {str(e).splitlines()[0]}") from None
    net.to(device).eval()
    return Model(network=net, manifest=manifest, sha256=digest, path=folder)


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _unpickle_reason(e: BaseException) -> str:
    """What torch's refusal says the pickle wanted, without its advice to load it unsafely."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for line in lines:
        reason = line.partition("WeightsUnpickler error:")[2].strip()
        if reason:
            return reason.split(". ")[0][:200]
    lines = [x for x in lines if not x.startswith(_TORCH_ADVICE) and "WeightsUnpickler error" not in x]
    return (lines[0].split(". ")[0] if lines else type(e).__name__)[:200]


def import_legacy(model_dat: str | os.PathLike[str], directory: str | os.PathLike[str]) -> str:
    """Import a 2018 ``model.dat`` (a pickled state_dict) as a mnistkit artifact.

    Loaded with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused, never executed. Returns the new artifact's sha256.
    """
    import torch

    from .network import Network

    src = Path(model_dat)
    if not src.is_file():
        raise ArtifactError(f"no file at {src}")
    if src.stat().st_size > MAX_LEGACY_BYTES:
        raise ArtifactError(f"{src} is {src.stat().st_size} bytes; a 2018 state_dict of the seed network is ~90 KB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the refusal says it all
            state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: refuse, never retry unsafely
        raise ArtifactError(
            f"{src} is not a plain state_dict; refused to unpickle it ({_unpickle_reason(e)})"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{src} does not hold a state_dict of tensors")
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise ArtifactError(f"{src} holds NaN or infinite weights; a model trained to diverge cannot serve")
    net = Network()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())[:400]
        raise ArtifactError(f"{src} does not fit the seed network: {detail or str(e)}") from None
    return save_artifact(directory, net.state_dict(), run={"imported_from": str(src.resolve())})


ONNX_FILE = "model.onnx"


def add_onnx(
    directory: str | os.PathLike[str],
    onnx_model: bytes,
    *,
    opset: int,
    parity: Mapping[str, Any],
    source_sha256: str,
) -> dict[str, Any]:
    """Write ``model.onnx`` into a verified artifact folder and record it in the manifest:
    its sha256 in ``files`` (so ``read_manifest`` verifies it) and an ``onnx`` record tying it
    to the weights' sha256 and to the artifact it came from. Returns the record."""
    manifest, _, folder = read_manifest(directory)
    digest = hashlib.sha256(onnx_model).hexdigest()
    record = {
        "file": ONNX_FILE,
        "sha256": digest,
        "weights_sha256": manifest["files"][manifest["weights"]],
        "source_sha256": source_sha256,  # the trained artifact's identity, before this file was added
        "opset": opset,
        "parity": dict(parity),
    }
    manifest["files"][ONNX_FILE] = digest
    manifest["onnx"] = record
    if "checksum" in manifest:  # format /2: the manifest's own checksum covers the new record
        manifest["checksum"] = manifest_checksum(manifest)
    try:
        _atomic_write(folder / ONNX_FILE, onnx_model)
        _atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    except OSError as e:
        raise ArtifactError(f"cannot write {ONNX_FILE} into {folder}: {e.strerror}") from None
    return record


def onnx_record(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest's ONNX record, checked against its files, or None when it has no ONNX model.

    Raises ``ArtifactError`` when the record does not belong to these weights (files that
    ``read_manifest`` already verified)."""
    record = manifest.get("onnx")
    if record is None:
        return None
    files = manifest.get("files", {})
    if (
        not isinstance(record, Mapping)
        or record.get("file") != ONNX_FILE
        or files.get(ONNX_FILE) != record.get("sha256")
        or files.get(manifest.get("weights")) != record.get("weights_sha256")
    ):
        raise ArtifactError(f"the manifest's ONNX record does not match its {ONNX_FILE} and weights; refusing it")
    return dict(record)
