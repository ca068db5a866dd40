"""What runs the network when serving: a ``Predictor`` over a verified model folder.

Both servers (the Seldon v1 class and the V2 runtime) and the smoke test go through
``load_predictor``: validated pixels ``(n, 28, 28)`` float32 0..255 in, class
probabilities ``(n, 10)`` float32 out, with the one shared preprocessing.

    torch   the safetensors weights in the seed ``Network`` (needs torch)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ArtifactError, ServingError

__all__ = ["Predictor", "TorchPredictor", "RUNTIMES", "load_predictor"]

RUNTIMES = ("auto", "torch")


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


def load_predictor(model_dir: str | os.PathLike[str], *, runtime: str = "auto", threads: int = 1) -> Predictor:
    """A verified predictor for ``model_dir``. Raises ``ServingError`` saying why it cannot serve."""
    if runtime not in RUNTIMES:
        raise ServingError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    try:
        return TorchPredictor(Path(model_dir), threads=threads)
    except ArtifactError as e:
        raise ServingError(f"cannot serve: {e}") from None
