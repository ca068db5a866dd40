"""A verified model -> ``model.onnx`` for ONNX Runtime, checked against torch on all of MNIST's test set.

Runs where torch is (the build host), never in a served image::

    export_onnx(model_dir)           the verified safetensors weights -> ONNX bytes (probabilities)
    check_parity(model_dir, onnx)    ONNX Runtime vs torch over the 10,000 test images
    attach_onnx(model_dir)           both, then model.onnx + its record into model_dir's manifest

The exporter is torch's TorchScript one (``dynamo=False``): its bytes depend only on the
weights and the versions (the dynamo exporter stores the calling script's path and lines).
It needs the ``onnx`` package; 1.17.0 is the last release that accepts protobuf 3.20.x,
which seldon-core 1.17.1 pins. The graph ends in ``Exp`` after the network's
``LogSoftmax``, so ONNX Runtime returns the probabilities torch serves.

Parity rule: the largest absolute difference of any probability is at most ``MAX_DIFF``,
and the predicted digit is the same for every image whose top two torch probabilities are
more than ``2 * MAX_DIFF`` apart (closer ones are near-ties, counted and reported; no
difference within ``MAX_DIFF`` can flip any other).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PackagingError

__all__ = ["OPSET", "MAX_DIFF", "Parity", "export_onnx", "check_parity", "attach_onnx"]

log = logging.getLogger(__name__)

OPSET = 17
MAX_DIFF = 1e-5
INPUT, OUTPUT = "pixels", "probabilities"


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against torch over ``images`` test images."""

    images: int
    max_abs_diff: float
    argmax_equal: int  # images where both predict the same digit
    near_ties: int  # images whose top two torch probabilities are within 2 * MAX_DIFF
    seconds: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_DIFF and self.argmax_equal + self.near_ties >= self.images

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(model_dir: str | os.PathLike[str]) -> bytes:
    """The verified model in ``model_dir`` as ONNX: input ``pixels`` (batch, 1, 28, 28) float32,
    normalised as ``mnistkit.data.preprocess`` does; output ``probabilities`` (batch, 10)."""
    try:
        import onnx  # noqa: F401  (the TorchScript exporter needs it)
        import torch
    except ImportError as e:
        raise PackagingError(
            f"exporting to ONNX needs torch and onnx==1.17.0 ({e.name} is missing): "
            "pip install 'mnistkit[export]', or build with --runtime torch"
        ) from None
    from .artifact import load_model

    net = load_model(model_dir).network.eval()

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).exp()  # (batch, 10)

    with tempfile.TemporaryDirectory(prefix="mnistkit-onnx-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Probabilities().eval(),
            (torch.zeros(1, 1, 28, 28),),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
        return path.read_bytes()


def _torch_probabilities(model_dir: str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    import torch

    from .runtime import TorchPredictor

    predictor = TorchPredictor(model_dir, threads=max(1, torch.get_num_threads()))
    return np.concatenate([predictor.predict(images[i : i + 1000]) for i in range(0, len(images), 1000)])


def check_parity(model_dir: str | os.PathLike[str], onnx_model: bytes, images: np.ndarray) -> Parity:
    """Run ``images`` (n, 28, 28) 0..255 through torch and through ONNX Runtime; compare."""
    from .runtime import onnx_session

    started = time.monotonic()
    want = _torch_probabilities(model_dir, images)  # (n, 10)
    from .data import preprocess_numpy

    session = onnx_session(onnx_model, threads=1)
    got = np.concatenate(
        [session.run(None, {INPUT: preprocess_numpy(images[i : i + 1000])})[0] for i in range(0, len(images), 1000)]
    )
    top2 = np.sort(want, axis=1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) <= 2 * MAX_DIFF
    same = want.argmax(1) == got.argmax(1)
    return Parity(
        images=len(images),
        max_abs_diff=float(np.abs(got - want).max()),
        argmax_equal=int(same.sum()),
        near_ties=int((near & ~same).sum()),
        seconds=round(time.monotonic() - started, 2),
    )


def _test_images(data_dir: str | os.PathLike[str] | None) -> np.ndarray:
    from .data import load_mnist
    from .errors import DataError

    try:
        return load_mnist(data_dir).test_images.numpy()  # (10000, 28, 28) uint8
    except DataError as e:  # its hint names mnistkit-train's flags; mnistkit-build has the variable
        where = str(e).split(";", 1)[0]
        raise PackagingError(
            f"the ONNX parity check needs MNIST's test set: {where}; set MNISTKIT_DATA_DIR to a folder holding "
            "MNIST/raw/ (or build with --runtime torch, which exports nothing)"
        ) from None


def attach_onnx(
    model_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Export the model in ``model_dir`` (a copy made for an image: it is changed), check
    parity on MNIST's test images and, only if it holds, write ``model.onnx`` and its record
    into the manifest. Returns the record; raises ``PackagingError`` when parity fails."""
    from .artifact import add_onnx, read_manifest

    folder = Path(model_dir)
    manifest, sha256, _ = read_manifest(folder)
    started = time.monotonic()
    onnx_model = export_onnx(folder)
    exported = time.monotonic() - started
    parity = check_parity(folder, onnx_model, _test_images(data_dir) if images is None else images)
    if not parity.ok:
        raise PackagingError(
            f"ONNX export of {folder} does not match torch: max probability difference {parity.max_abs_diff:.2e} "
            f"(limit {MAX_DIFF:.0e}), same digit for {parity.argmax_equal} of {parity.images} images; "
            "build with --runtime torch"
        )
    # exported again (a second call on one folder): the trained artifact is still the one the first named
    source = (manifest.get("onnx") or {}).get("source_sha256", sha256)
    record = add_onnx(folder, onnx_model, opset=OPSET, parity=parity.to_json(), source_sha256=source)
    log.info(
        "exported %s to ONNX in %.1fs; parity over %d images: max difference %.1e, %d/%d same digit",
        folder,
        exported,
        parity.images,
        parity.max_abs_diff,
        parity.argmax_equal,
        parity.images,
    )
    return record
