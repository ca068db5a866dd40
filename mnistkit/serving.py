"""The Seldon Core v1 model class: ``seldon-core-microservice mnistkit.serving.MnistModel``.

It loads a verified mnistkit artifact, accepts what clients really send (raw pixels
0..255 as ints or floats in shapes ``[784]``, ``[n, 784]``, ``[28, 28]``,
``[n, 28, 28]``, ``[n, 1, 28, 28]``, or an encoded image as ``binData``), applies the one
shared preprocessing (``mnistkit.data.preprocess``) and returns class probabilities
``[n, 10]``. Bad input is refused with HTTP 400 and a message, never a 500.

Configuration: constructor parameters (``model_path``, ``max_batch``, ``threads``, as
SeldonDeployment ``parameters``) or ``mnistkit.settings`` (``MNISTKIT_MODEL``,
``MNISTKIT_MAX_BATCH``, ``MNISTKIT_THREADS``, ...). The default model path is ``./model``,
where the s2i build puts it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import ArtifactError, ServingError
from .pixels import PIXELS, SHAPES, BadInput, decode_image, to_pixels
from .settings import settings

__all__ = ["MnistModel", "golden_image"]

log = logging.getLogger(__name__)

DIGITS = [str(d) for d in range(10)]


def golden_image() -> bytes:
    """A real MNIST test 7 that ships in the package: the health check predicts it."""
    from importlib.resources import files

    return (files("mnistkit") / "assets" / "digits" / "mnist-test-0000.png").read_bytes()


class MnistModel:
    """Seldon Core v1 Python component serving a mnistkit artifact."""

    def __init__(
        self,
        model_path: str | None = None,
        max_batch: int | None = None,
        threads: int | None = None,
        invert: bool = False,
        metrics_interval: float | None = None,
    ) -> None:
        from .artifact import onnx_record, read_manifest

        env = settings()
        self.model_path = Path(model_path or env.model)
        self.max_batch = int(max_batch or env.max_batch)
        self.max_image_pixels = env.max_image_pixels
        self.threads = int(threads or env.threads)
        self.runtime = env.runtime
        self.builder_digest = env.builder_digest or ""
        from .build.wheel import package_version

        self.code_version = package_version()  # a digest of the files of the mnistkit running here
        self.invert = invert
        # Seldon writes custom metrics to a multiprocessing manager (two IPC round trips per
        # update), so counters are handed over at most once per interval, not per request.
        self.metrics_interval = float(metrics_interval if metrics_interval is not None else env.metrics_interval)
        self._last_flush = 0.0
        try:
            # Verify at start-up so a missing or tampered artifact stops the server at once.
            self.manifest, self.sha256, _ = read_manifest(self.model_path)
            onnx_record(self.manifest)  # an ONNX model must belong to these weights
        except ArtifactError as e:
            raise ServingError(f"cannot serve: {e}") from None
        from .runtime import resolve_runtime

        resolve_runtime(self.model_path, self.runtime)  # here, before Seldon forks its workers
        self._predictor: Any = None
        self._pending = np.zeros(10, dtype=np.int64)  # predictions per digit since last metrics()
        self._refused = 0
        self._counts = threading.Lock()  # the request and mnistkit.serve's late hand-over both count
        log.info("mnistkit model %s (sha256 %s) ready to load", self.model_path, self.artifact_sha256[:12])

    # -- Seldon hooks -----------------------------------------------------------------

    def load(self) -> None:
        """Load the model (Seldon calls this in each server process)."""
        if self._predictor is not None:
            return
        from .runtime import load_predictor

        predictor = load_predictor(self.model_path, runtime=self.runtime, threads=self.threads)
        if predictor.sha256 != self.sha256:
            raise ServingError(f"cannot serve: {self.model_path} changed after start-up")
        self._predictor = predictor

    def predict_raw(self, request: Any) -> Any:
        """Check the raw REST message Seldon would otherwise fail on with a 500, then hand
        over to ``predict`` through Seldon's own path (tags, metrics, response shape)."""
        from seldon_core.user_model import SeldonNotImplementedError

        if isinstance(request, dict):
            self._check_message(request)
        raise SeldonNotImplementedError("fall through to predict")

    def send_feedback_raw(self, feedback: Any) -> Any:
        """Check a feedback message's data as Seldon will read it (a shape that does not fit its
        values was a 500 echoing numpy), then hand over to Seldon's own feedback path."""
        from seldon_core.user_model import SeldonNotImplementedError
        from seldon_core.utils import extract_feedback_request_parts

        try:
            extract_feedback_request_parts(feedback)
        except Exception as e:  # whatever numpy or protobuf raise on data that does not fit
            self._refuse(f"the feedback's request or truth is not valid tensor or ndarray data ({type(e).__name__})")
        raise SeldonNotImplementedError("fall through to Seldon's feedback")

    def predict(self, X: Any, features_names: Any = None, **kwargs: Any) -> np.ndarray:
        """Pixels or image bytes -> probabilities ``(n, 10)``, rows summing to 1."""
        try:
            pixels = to_pixels(X, max_batch=self.max_batch, max_image_pixels=self.max_image_pixels, invert=self.invert)
        except BadInput as e:
            self._refuse(str(e))
        return self.predict_pixels(pixels)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Validated ``(n, 28, 28)`` pixels 0..255 -> probabilities ``(n, 10)``, counted."""
        out = self._infer(pixels)
        with self._counts:
            np.add.at(self._pending, out.argmax(axis=1), 1)
        return out

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        self.load()
        return self._predictor.predict(pixels)  # (n, 10)

    def class_names(self) -> list[str]:
        return DIGITS

    @property
    def artifact_sha256(self) -> str:
        """The trained artifact's identity: an image's copy with ``model.onnx`` added has its
        own manifest, which records where it came from."""
        return str((self.manifest.get("onnx") or {}).get("source_sha256") or self.sha256)

    @property
    def platform(self) -> str:
        return "onnxruntime" if self.manifest.get("onnx") and self.runtime != "torch" else "pytorch"

    def tags(self) -> dict[str, str]:
        return {
            "model_sha256": self.artifact_sha256,
            "model_run": str(self.manifest.get("run", {}).get("id", "")),
            "mnistkit_version": self.code_version,
            "builder_digest": self.builder_digest,
        }

    def metrics(self) -> list[dict[str, Any]]:
        """Counters since the last hand-over: predictions per digit, refused requests.

        Between hand-overs it says "not implemented", which makes Seldon skip its update."""
        with self._counts:
            now = time.monotonic()
            if now - self._last_flush < self.metrics_interval:
                from seldon_core.user_model import SeldonNotImplementedError

                raise SeldonNotImplementedError("metrics are handed over once per interval")
            self._last_flush = now
            out = [
                {"type": "COUNTER", "key": "mnistkit_predictions_total", "value": int(v), "tags": {"digit": str(d)}}
                for d, v in enumerate(self._pending)
                if v
            ]
            if self._refused:
                out.append({"type": "COUNTER", "key": "mnistkit_refused_total", "value": self._refused})
            self._pending[:] = 0
            self._refused = 0
        return out

    def health_status(self) -> np.ndarray:
        """A real prediction on the built-in golden image (an MNIST test 7)."""
        pixels = decode_image(golden_image()).pixels[None].astype(np.float32)
        probs = self._infer(pixels)  # not counted: health checks are not traffic
        if not (np.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-3):
            raise ServingError("health check failed: the model returned invalid probabilities")
        return probs

    def init_metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": "mnistkit-mnist",
            "versions": [self.artifact_sha256[:12]],
            "platform": self.platform,
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [-1, PIXELS]},
                {"messagetype": "binData"},
            ],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            "custom": {
                "input_range": "raw pixel intensities 0..255, white digit on black",
                "input_shapes": f"{SHAPES}; or an image as binData",
                "max_batch": str(self.max_batch),
                "run_id": str(m.get("run", {}).get("id", "")),
                "params": json.dumps(m.get("train_config", {}), sort_keys=True),
                "metrics": json.dumps(m.get("metrics", {}), sort_keys=True),
                "artifact_sha256": self.artifact_sha256,
                "mnistkit_version": self.code_version,  # the code serving now (its own wheel)
                "builder_digest": self.builder_digest,
                "trained_with": str(m.get("versions", {}).get("mnistkit", "")),
            },
        }

    # -- helpers --------------------------------------------------------------------

    def _refuse(self, message: str) -> NoReturn:
        from seldon_core.flask_utils import SeldonMicroserviceException

        with self._counts:
            self._refused += 1
        raise SeldonMicroserviceException(message, status_code=400, reason="MNISTKIT_BAD_INPUT")

    def _check_bindata(self, value: Any) -> None:
        import binascii

        if not isinstance(value, (str, bytes)):  # bytes: a multipart upload, base64-encoded by Seldon
            self._refuse(f"binData must be a base64 string of an image file, got {type(value).__name__}")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            self._refuse("binData is not valid base64; send the image file's bytes base64-encoded")

    def _check_meta(self, meta: Any) -> None:
        """Seldon reads these fields of ``meta`` without checking their types (a 500 if wrong)."""
        if not isinstance(meta, dict):
            self._refuse("meta must be an object")
        for key, kind in (("tags", dict), ("routing", dict), ("requestPath", dict), ("metrics", list), ("puid", str)):
            if key in meta and not isinstance(meta[key], kind):
                self._refuse(
                    f"meta.{key} must be {'an object' if kind is dict else 'a list' if kind is list else 'a string'}"
                )

    def _check_message(self, request: dict[str, Any]) -> None:
        if "meta" in request:
            self._check_meta(request["meta"])
        data = request.get("data")
        if "data" in request and "binData" in request:
            self._refuse("request has both data and binData; send one")
        if data is None:
            if "binData" in request:
                self._check_bindata(request["binData"])
                return
            kinds = ", ".join(k for k in ("strData", "jsonData") if k in request) or "no data"
            self._refuse(f"request has {kinds}: send pixels in data.tensor / data.ndarray, or an image as binData")
        if not isinstance(data, dict) or not ({"tensor", "ndarray"} & set(data)):
            self._refuse("request data must hold a tensor or an ndarray of pixels")
        if "ndarray" in data:
            if not isinstance(data["ndarray"], list):
                self._refuse("data.ndarray must be a list of images (lists of pixels)")
            try:
                np.asarray(data["ndarray"])
            except ValueError:
                self._refuse("data.ndarray is ragged; every image must have 784 pixels")
        if "tensor" in data:
            tensor = data["tensor"]
            if (
                not isinstance(tensor, dict)
                or not isinstance(tensor.get("shape"), list)
                or not isinstance(tensor.get("values"), list)
            ):
                self._refuse("data.tensor needs a list 'shape' and a list 'values'")
            shape = tensor["shape"]
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                self._refuse(f"data.tensor.shape must be a list of whole numbers >= 0, got {str(shape)[:100]}")
            if len(shape) > 4:
                self._refuse(f"data.tensor.shape has {len(shape)} dimensions; pixels need at most 4 ({SHAPES})")
            want = int(np.prod(shape, dtype=object)) if shape else 1
            if want != len(tensor["values"]):
                needs = want if want < 10**12 else "far more"
                self._refuse(f"data.tensor.shape {str(shape)[:100]} needs {needs} values, got {len(tensor['values'])}")
            values = np.asarray(tensor["values"]) if tensor["values"] else np.zeros(0)
            if values.ndim != 1 or values.dtype.kind not in "iuf":  # nested lists, strings, booleans, nulls
                self._refuse("data.tensor.values must be a flat list of numbers (the pixels, 0..255)")
            tensor["values"] = values  # converted once: Seldon's own np.array of it is then a copy
