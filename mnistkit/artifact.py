"""The saved model: safetensors weights + a JSON manifest with checksums; safe loading.

Layout of an artifact folder::

    model/
      manifest.json                       what, from where, checksums of every file
      weights-<sha256[:16]>.safetensors   the network's state_dict

The weights file is content-addressed and the manifest is replaced atomically, so a
crash mid-save leaves the previous model loadable. The artifact's identity
(``sha256``) is the sha256 of ``manifest.json``, which pins every file's sha256.
An image's copy of the folder may also hold ``model.onnx`` (see ``mnistkit.export``): the
manifest lists it in ``files`` like the weights and ties it to them in its ``onnx`` record.
Nothing here ever unpickles: a pickle is refused, and a 2018 ``model.dat`` is imported
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .data import MEAN, PIXEL_MAX, STD
from .errors import ArtifactError

if TYPE_CHECKING:  # torch is imported only by the functions that make tensors
    import torch

    from .network import Network

__all__ = [
    "FORMAT",
    "Model",
    "save_artifact",
    "load_model",
    "read_manifest",
    "import_legacy",
    "artifact_dir",
    "sha256_file",
    "ONNX_FILE",
    "add_onnx",
    "onnx_record",
]

FORMAT = "mnistkit-artifact/1"
MANIFEST = "manifest.json"
PREPROCESSING = {
    "scale": PIXEL_MAX,
    "mean": MEAN,
    "std": STD,
    "layout": "NCHW",
    "input": "raw pixels 0..255, white on black",
}


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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        raise ArtifactError(f"cannot create {out}: {e.strerror}; choose a writable --output-dir") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    blob = save(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    weights = f"weights-{digest[:16]}.safetensors"
    manifest = {
        "format": FORMAT,
        "weights": weights,
        "files": {weights: digest},
        "network": NETWORK_CONFIG,
        "preprocessing": PREPROCESSING,
        "train_config": dict(train_config or {}),
        "metrics": dict(metrics or {}),
        "run": dict(run or {}),
        "versions": {"mnistkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    try:
        if not (out / weights).exists():
            _atomic_write(out / weights, blob)
        _atomic_write(out / MANIFEST, text)
    except OSError as e:
        raise ArtifactError(
            f"cannot write the model into {out}: {e.strerror}; choose a writable --output-dir"
        ) from None
    for stale in out.glob("weights-*.safetensors"):
        if stale.name != weights:
            stale.unlink(missing_ok=True)
    return hashlib.sha256(text).hexdigest()


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save's zip container, or a raw pickle stream (protocol 2+ starts with 0x80)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def artifact_dir(path: str | os.PathLike[str]) -> Path:
    """Find the artifact folder for a path: the folder itself, its ``manifest.json``,
    or a run folder holding ``model/``. Raises ``ArtifactError`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no model at {p}; pass a run folder, a model folder or its manifest.json")
    if p.is_file():
        if p.name == MANIFEST:
            return p.parent
        if _looks_like_pickle(p):
            raise ArtifactError(
                f"{p} is a pickle (torch.save); mnistkit never unpickles models. "
                "Convert a 2018 state_dict with 'mnistkit-train --import-legacy FILE'"
            )
        raise ArtifactError(f"{p} is not a mnistkit model; pass a run folder, a model folder or its manifest.json")
    for candidate in (p, p / "model"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ArtifactError(f"no {MANIFEST} in {p} or {p / 'model'}; is this a mnistkit run folder?")


def read_manifest(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str, Path]:
    """Verify an artifact's checksums without loading torch weights.

    Returns (manifest, artifact sha256, folder).
    """
    folder = artifact_dir(path)
    raw = (folder / MANIFEST).read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{folder / MANIFEST} is not valid JSON ({e.msg}); the artifact is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder} is not a {FORMAT} artifact")
    files = manifest.get("files")
    weights = manifest.get("weights")
    if not isinstance(files, dict) or weights not in files or not str(weights).endswith(".safetensors"):
        raise ArtifactError(f"{folder / MANIFEST} does not list its weights file; the artifact is damaged")
    for name, want in files.items():
        f = folder / name
        if Path(name).name != name or not f.is_file():
            raise ArtifactError(f"{f} is missing; the artifact is incomplete")
        if sha256_file(f) != want:
            raise ArtifactError(
                f"{f} does not match its sha256 in {MANIFEST}: the artifact was modified; refusing to load it"
            )
    return manifest, hashlib.sha256(raw).hexdigest(), folder


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """Load a verified artifact. Refuses pickles, missing files and checksum mismatches."""
    from safetensors.torch import load_file

    from .network import Network

    manifest, digest, folder = read_manifest(path)
    net = Network()
    try:
        state = load_file(str(folder / manifest["weights"]), device=device)
        net.load_state_dict(state)
    except Exception as e:  # safetensors' own error type differs between versions
        raise ArtifactError(f"{folder} holds weights that do not fit the network: {e}") from None
    net.to(device).eval()
    return Model(network=net, manifest=manifest, sha256=digest, path=folder)


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
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: refuse, never retry unsafely
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{src} is not a plain state_dict; refused to unpickle it ({first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{src} does not hold a state_dict of tensors")
    net = Network()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{src} does not fit the seed network: {str(e).splitlines()[0]}") from None
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
