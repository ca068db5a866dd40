"""The V2 (Open Inference Protocol) runtime: ``mnistkit.serving_v2.MnistRuntime`` for MLServer 1.7.

It serves a verified mnistkit artifact through ``load_predictor`` (the same verification,
preprocessing and network as the Seldon v1 class ``MnistModel``) with the input rules of
``protocol_v2``: one input, ``pixels`` (any INT/UINT/FP datatype, ``[n, 784]``,
``[n, 28, 28]`` or ``[n, 1, 28, 28]``, 0..255) or ``images`` (BYTES, base64 of encoded
images); outputs ``probabilities`` FP32 ``[n, 10]`` and ``digits`` INT64 ``[n]``. Bad input
is a 400 V2 error saying what is wrong; anything unexpected is a 500 without a traceback.

Counters go to ``prometheus_client`` directly (``mnistkit_*``): MLServer's own
``mlserver.log`` metrics are never exported with ``parallel_workers: 0``.

This module needs MLServer (the ``.venv-mlserver`` venv, or a V2 image); ``model_settings``
writes the ``model-settings.json`` that names it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri
from prometheus_client import REGISTRY, Counter

from .errors import ServingError
from .pixels import BadInput, decode_image
from .protocol_v2 import OUTPUT_DIGITS, OUTPUT_PROBABILITIES, Tensor, pixels_from_tensor
from .settings import settings

__all__ = ["MnistRuntime"]

log = logging.getLogger(__name__)


def _counter(name: str, doc: str, labels: list[str]) -> Counter:
    """The counter ``name``, made once: MLServer reloads this module when it loads a model."""
    existing = REGISTRY._names_to_collectors.get(f"{name}_total")
    return existing if isinstance(existing, Counter) else Counter(name, doc, labels)


PREDICTIONS = _counter("mnistkit_predictions", "Images predicted, by predicted digit", ["model_name", "digit"])
REFUSED = _counter("mnistkit_refused", "Inference requests refused as bad input (HTTP 400)", ["model_name"])


class MnistRuntime(MLModel):  # type: ignore[misc]  # MLServer is untyped here
    """An MLServer model serving one mnistkit artifact (``parameters.uri``, default ``./model``)."""

    async def load(self) -> bool:
        from .runtime import load_predictor
        from .serving import golden_image

        env = settings()
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._max_batch = int(extra.get("max_batch") or env.max_batch)
        self._max_image_pixels = env.max_image_pixels
        model_dir = Path(await get_model_uri(self.settings))
        predictor = load_predictor(model_dir, runtime=env.runtime, threads=env.threads)
        want = self.settings.parameters.version if self.settings.parameters else None
        # the version is the trained artifact's identity; an exported model.onnx records it as its source
        trained = str((predictor.manifest.get("onnx") or {}).get("source_sha256", predictor.sha256))
        if want and not trained.startswith(want):
            raise ServingError(f"cannot serve: {model_dir} is artifact {trained[:12]}, not version {want}")
        probs = predictor.predict(decode_image(golden_image()).pixels[None].astype(np.float32))
        if not (np.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-3):
            raise ServingError("cannot serve: the model returned invalid probabilities on the built-in test digit")
        self._predictor = predictor
        # what runs it, as the v1 class says it: the metadata's platform (model-settings.json names none)
        self._settings.platform = "onnxruntime" if predictor.runtime == "onnx" else "pytorch"
        log.info("mnistkit model %s (sha256 %s, %s) ready", model_dir, trained[:12], predictor.runtime)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            return self._predict(payload)
        except BadInput as e:
            REFUSED.labels(self.name).inc()
            raise InferenceError(str(e)) from None
        except MLServerError:
            raise
        except Exception:  # a bug: logged here, and the client gets no traceback
            log.exception("inference failed")
            raise MLServerError("inference failed inside the model; see the server log", 500) from None

    def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        pixels = self._pixels(payload)  # (n, 28, 28)
        wanted = self._wanted_outputs(payload)
        probs = self._predictor.predict(pixels)  # (n, 10)
        digits = probs.argmax(axis=1)  # (n,)
        for d, count in enumerate(np.bincount(digits, minlength=10).tolist()):
            if count:
                PREDICTIONS.labels(self.name, str(d)).inc(count)
        outputs = {
            OUTPUT_PROBABILITIES: ResponseOutput(
                name=OUTPUT_PROBABILITIES, shape=list(probs.shape), datatype="FP32", data=probs.ravel().tolist()
            ),
            OUTPUT_DIGITS: ResponseOutput(
                name=OUTPUT_DIGITS, shape=[len(digits)], datatype="INT64", data=digits.tolist()
            ),
        }
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[outputs[n] for n in wanted])

    def _pixels(self, payload: InferenceRequest) -> np.ndarray:
        if len(payload.inputs) != 1:
            names = ", ".join(repr(i.name) for i in payload.inputs) or "none"
            raise BadInput(f"send exactly one input, 'pixels' or 'images' (got {names})")
        inp = payload.inputs[0]
        data = inp.data.root if hasattr(inp.data, "root") else inp.data
        tensor = Tensor(inp.name, str(getattr(inp.datatype, "value", inp.datatype)), inp.shape, data)
        return pixels_from_tensor(tensor, max_batch=self._max_batch, max_image_pixels=self._max_image_pixels)

    @staticmethod
    def _wanted_outputs(payload: InferenceRequest) -> list[str]:
        if not payload.outputs:
            return [OUTPUT_PROBABILITIES, OUTPUT_DIGITS]
        names = [o.name for o in payload.outputs]
        unknown = [n for n in names if n not in (OUTPUT_PROBABILITIES, OUTPUT_DIGITS)]
        if unknown:
            raise BadInput(
                f"unknown output {unknown[0]!r}: this model has {OUTPUT_PROBABILITIES!r} and {OUTPUT_DIGITS!r}"
            )
        return list(dict.fromkeys(names))
