"""What runs the network when serving: a ``Predictor`` over a verified model folder.

Both servers (the Seldon v1 class and the V2 runtime) and the smoke test go through
``load_predictor``: validated pixels ``(n, 28, 28)`` float32 0..255 in, class
probabilities ``(n, 10)`` float32 out, with the one shared preprocessing.

    onnx    ``model.onnx`` (exported at build time, see ``mnistkit.export``) in ONNX Runtime,
            preprocessing in numpy (``mnistkit.data.preprocess_numpy``); no torch
    torch   the safetensors weights in the seed ``Network`` (needs torch)

``runtime="auto"`` (``MNISTKIT_RUNTIME``) takes ONNX when the model folder has it and
onnxruntime is installed, else torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ArtifactError, ServingError

__all__ = [
    "Predictor",
    "TorchPredictor",
    "OnnxPredictor",
    "RUNTIMES",
    "load_predictor",
    "onnx_session",
    "resolve_runtime",
]

RUNTIMES = ("auto", "onnx", "torch")


class Predictor(Protocol):
    runtime: str
    sha256: str  # the artifact's identity (sha256 of its manifest)
    manifest: dict[str, Any]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """``(n, 28, 28)`` float32 pixels 0..255 -> ``(n, 10)`` float32 probabilities."""
        ...


class TorchPredictor:
    """The artifact's safetensors weights in the seed network, on the CPU."""

    runtime = "torch"

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int = 1) -> None:
        import torch

        from .artifact import load_model
        from .data import preprocess

        torch.set_num_threads(threads)
        model = load_model(model_dir)
        self.network, self.manifest, self.sha256 = model.network, model.manifest, model.sha256
        self._preprocess = preprocess

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._preprocess(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))  # (n, 1, 28, 28)
            return self.network(x).exp().numpy()  # (n, 10)


def onnx_session(model: bytes | str | os.PathLike[str], *, threads: int = 1) -> Any:
    """An ONNX Runtime session on the CPU that starts no threads of its own beyond ``threads``
    and does not spin (the server's processes share the cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ServingError(
            "the onnx runtime needs onnxruntime (pip install 'mnistkit[serve]'); or set MNISTKIT_RUNTIME=torch"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """``model.onnx`` in ONNX Runtime with numpy preprocessing; the folder is verified first
    (a swapped ``model.onnx`` fails its sha256, a foreign one its tie to the weights)."""

    runtime = "onnx"

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int = 1) -> None:
        from .artifact import onnx_record, read_manifest
        from .data import preprocess_numpy

        self.manifest, self.sha256, folder = read_manifest(model_dir)
        record = onnx_record(self.manifest)
        if record is None:
            raise ArtifactError(f"{folder} has no ONNX model; build the image with --runtime onnx")
        # read once and hash what is loaded, so the file cannot change between check and load
        data = (folder / record["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise ArtifactError(f"{folder / record['file']} changed after it was verified; refusing it")
        self.session = onnx_session(data, threads=threads)
        self._input = self.session.get_inputs()[0].name
        self._preprocess = preprocess_numpy

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        x = self._preprocess(pixels)  # (n, 1, 28, 28) float32
        return self.session.run(None, {self._input: x})[0]  # (n, 10)


def _has_onnx(model_dir: Path) -> bool:
    """Whether ``auto`` should serve ONNX: the folder has it and ONNX Runtime is installed
    (an image built for torch serves torch even from a folder that holds model.onnx)."""
    import importlib.util

    from .artifact import artifact_dir, onnx_record, read_manifest

    if importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        manifest = read_manifest(artifact_dir(model_dir))[0]
    except ArtifactError:
        return False  # the predictor's own load says what is wrong
    return onnx_record(manifest) is not None  # a record that does not fit its files raises


def resolve_runtime(model_dir: str | os.PathLike[str], runtime: str = "auto") -> str:
    """``onnx`` or ``torch``: what will serve ``model_dir`` for the setting ``runtime``, without
    loading it. Raises ``ServingError`` when that runtime cannot: not installed, or (onnx) no
    ``model.onnx`` in the folder. A server checks this before it starts its worker processes,
    so a wrong setting is one line there, not a traceback in each worker."""
    import importlib.util

    from .artifact import artifact_dir, onnx_record, read_manifest

    if runtime not in RUNTIMES:
        raise ServingError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if _has_onnx(Path(model_dir)) else "torch"
    if runtime == "torch" and importlib.util.find_spec("torch") is None:
        raise ServingError("the torch runtime needs torch, which is not installed here; or set MNISTKIT_RUNTIME=onnx")
    if runtime == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ServingError(
                "the onnx runtime needs onnxruntime (pip install 'mnistkit[serve]'); or set MNISTKIT_RUNTIME=torch"
            )
        try:
            folder = artifact_dir(model_dir)
            if onnx_record(read_manifest(folder)[0]) is None:
                raise ServingError(
                    f"cannot serve: {folder} has no ONNX model; build the image with --runtime onnx "
                    "(or set MNISTKIT_RUNTIME=torch)"
                )
        except ArtifactError as e:
            raise ServingError(f"cannot serve: {e}") from None
    return runtime


def load_predictor(model_dir: str | os.PathLike[str], *, runtime: str = "auto", threads: int = 1) -> Predictor:
    """A verified predictor for ``model_dir``. Raises ``ServingError`` saying why it cannot serve."""
    runtime = resolve_runtime(model_dir, runtime)
    try:
        if runtime == "onnx":
            return OnnxPredictor(Path(model_dir), threads=threads)
        return TorchPredictor(Path(model_dir), threads=threads)
    except ArtifactError as e:
        raise ServingError(f"cannot serve: {e}") from None
