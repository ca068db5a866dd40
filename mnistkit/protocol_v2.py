"""The Open Inference Protocol (V2) as mnistkit speaks it: tensors <-> pixels, numpy only.

The V2 runtime (``serving_v2``) and the client both go through here, so they agree on
names and rules. A request carries exactly one input::

    pixels   INT*/UINT*/FP*  [n, 784] | [n, 28, 28] | [n, 1, 28, 28]   raw intensities 0..255
    images   BYTES           [n]                                       base64 of encoded images

and the answer two outputs: ``probabilities`` FP32 ``[n, 10]`` and ``digits`` INT64 ``[n]``.
``data`` may be flat (row-major, as the spec says) or nested. Bad input raises
``BadInput`` (the servers answer 400 with the message).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pixels import PIXELS, SHAPES, SIDE, BadInput, as_batch, decode_image

__all__ = [
    "MODEL_NAME",
    "INPUT_PIXELS",
    "INPUT_IMAGES",
    "OUTPUT_PROBABILITIES",
    "OUTPUT_DIGITS",
    "NUMERIC",
    "Tensor",
    "pixels_from_tensor",
    "metadata_tensors",
    "model_settings",
    "pixels_request",
    "images_request",
    "read_outputs",
]

MODEL_NAME = "mnist"
INPUT_PIXELS = "pixels"
INPUT_IMAGES = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_DIGITS = "digits"
INTEGERS = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
NUMERIC = (*INTEGERS, "FP16", "FP32", "FP64")


@dataclass(frozen=True)
class Tensor:
    """One V2 input tensor, as it arrived (``data`` flat or nested lists, or str/bytes)."""

    name: str
    datatype: str
    shape: Sequence[Any]
    data: Any


def _shape(tensor: Tensor, most: int) -> tuple[int, ...]:
    """The declared shape, checked before any data is touched (a shape may claim 10^9 values)."""
    shape = tensor.shape
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadInput(f"input {tensor.name!r}: shape must be a list of integers, got {str(shape)[:100]}")
    if len(shape) > 4:
        raise BadInput(f"input {tensor.name!r}: shape has {len(shape)} dimensions; pixels need at most 4")
    if any(d < 0 for d in shape):
        raise BadInput(f"input {tensor.name!r}: shape {str(list(shape))[:100]} has a negative dimension")
    n = math.prod(shape)
    if n > most:
        raise BadInput(
            f"input {tensor.name!r}: shape {str(list(shape))[:100]} holds {n if n < 10**12 else 'far more'} values, "
            f"over the limit of {most}"
        )
    return tuple(shape)


def _flat(tensor: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """``data`` as a flat array whose size matches ``shape``."""
    try:
        arr = np.asarray(tensor.data)
    except (ValueError, OverflowError, RecursionError):
        raise BadInput(f"input {tensor.name!r}: data is ragged or too deeply nested; send a flat list") from None
    if arr.dtype == object:
        raise BadInput(f"input {tensor.name!r}: data must be a flat list of values")
    if arr.size != math.prod(shape):
        raise BadInput(f"input {tensor.name!r}: shape {list(shape)} needs {math.prod(shape)} values, got {arr.size}")
    return arr.reshape(-1)


def _pixels(tensor: Tensor, max_batch: int) -> np.ndarray:
    shape = _shape(tensor, max_batch * PIXELS)
    flat = _flat(tensor, shape)
    if flat.size == 0:
        raise BadInput(f"input {tensor.name!r} holds no pixels; send {PIXELS} values (0..255) per image")
    if flat.dtype == np.bool_:
        raise BadInput(f"input {tensor.name!r}: pixels must be numbers 0..255, got booleans")
    if flat.dtype.kind in "US":
        raise BadInput(f"input {tensor.name!r} is {tensor.datatype}: pixels must be numbers 0..255, got strings")
    if tensor.datatype in INTEGERS and flat.dtype.kind == "f":
        raise BadInput(f"input {tensor.name!r} is {tensor.datatype} but holds non-integers; declare FP32")
    return as_batch(flat.reshape(shape), max_batch=max_batch, what=f"input {tensor.name!r}")


def _image_bytes(value: Any, i: int) -> bytes:
    if isinstance(value, bytes):  # gRPC bytes_contents: the base64 text, or the file itself
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value  # an image file's bytes are never valid base64 (PNG starts with 0x89)
    if not isinstance(value, str):
        raise BadInput(f"images[{i}] must be a base64 string of an encoded image, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"images[{i}] is not valid base64 (send each image file base64-encoded)") from None


def _images(tensor: Tensor, max_batch: int, max_image_pixels: int | None) -> np.ndarray:
    shape = _shape(tensor, max_batch)
    if len(shape) not in (1, 2) or len(shape) == 2 and shape[1] != 1:
        raise BadInput(f"input {tensor.name!r}: BYTES shape must be [n] (one encoded image each), got {list(shape)}")
    values = tensor.data if isinstance(tensor.data, list) else [tensor.data]
    if len(shape) == 2 or values and isinstance(values[0], list):
        values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
    if len(values) != math.prod(shape) or not values:
        raise BadInput(f"input {tensor.name!r}: shape {list(shape)} needs {math.prod(shape)} images, got {len(values)}")
    # max_image_pixels bounds the whole request, not each image: decoding and resizing cost
    # CPU by the pixel (a blank 4096x4096 PNG is 16 KB; 200 of them fit a 4 MB body)
    pixels, left = [], max_image_pixels
    for i, v in enumerate(values):
        limit = f"the limit of {max_image_pixels} for all the images of a request" if i else ""
        image = decode_image(_image_bytes(v, i), name=f"images[{i}]", max_pixels=left, limit_says=limit)
        pixels.append(image.pixels)
        if left is not None:
            width, height = image.resized_from or (SIDE, SIDE)
            left -= width * height
    return np.stack(pixels).astype(np.float32)  # (n, 28, 28)


def pixels_from_tensor(tensor: Tensor, *, max_batch: int, max_image_pixels: int | None = None) -> np.ndarray:
    """The one input of a V2 request -> ``(n, 28, 28)`` float32 pixels 0..255. Raises ``BadInput``."""
    kind = tensor.datatype
    if kind == "BYTES":
        if tensor.name != INPUT_IMAGES:
            raise BadInput(f"BYTES input must be named {INPUT_IMAGES!r} (base64 images), got {tensor.name!r}")
        return _images(tensor, max_batch, max_image_pixels)
    if kind not in NUMERIC:
        raise BadInput(f"input {tensor.name!r} has datatype {kind!r}: use one of {', '.join(NUMERIC)} or BYTES")
    if tensor.name != INPUT_PIXELS:
        raise BadInput(f"numeric input must be named {INPUT_PIXELS!r} (raw pixels 0..255), got {tensor.name!r}")
    return _pixels(tensor, max_batch)


def metadata_tensors(max_batch: int) -> dict[str, list[dict[str, Any]]]:
    """What ``GET /v2/models/<name>`` declares: the two inputs (send one) and the two outputs."""
    return {
        "inputs": [
            {
                "name": INPUT_PIXELS,
                "datatype": "FP32",
                "shape": [-1, PIXELS],
                "parameters": {
                    "content": f"raw pixels 0..255, white digit on black; shapes {SHAPES}; any INT/UINT/FP datatype",
                    "max_batch": max_batch,
                },
            },
            {
                "name": INPUT_IMAGES,
                "datatype": "BYTES",
                "shape": [-1],
                "parameters": {"content": "base64 of encoded images (PNG, JPEG, ...); send pixels or images"},
            },
        ],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, 10]},
            {"name": OUTPUT_DIGITS, "datatype": "INT64", "shape": [-1]},
        ],
    }


def pixels_request(pixels: np.ndarray, datatype: str = "INT32") -> dict[str, Any]:
    """A V2 request of ``(n, 28, 28)`` pixels, flattened to ``[n, 784]``; ints when they are whole."""
    arr = np.asarray(pixels).reshape(-1, PIXELS)
    whole = datatype in INTEGERS
    values = arr.astype(np.int64).ravel().tolist() if whole else arr.astype(np.float64).ravel().tolist()
    return {"inputs": [{"name": INPUT_PIXELS, "shape": list(arr.shape), "datatype": datatype, "data": values}]}


def images_request(encoded: Sequence[bytes]) -> dict[str, Any]:
    """A V2 request of encoded image files, each base64 in one BYTES element."""
    data = [base64.b64encode(e).decode("ascii") for e in encoded]
    return {"inputs": [{"name": INPUT_IMAGES, "shape": [len(data)], "datatype": "BYTES", "data": data}]}


def read_outputs(response: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 10)`` probabilities and ``(n,)`` digits from a V2 response. Raises ``ValueError``."""
    outputs = {o.get("name"): o for o in (response or {}).get("outputs", []) if isinstance(o, dict)}
    if OUTPUT_PROBABILITIES not in outputs:
        raise ValueError(f"no {OUTPUT_PROBABILITIES!r} output (got {sorted(map(str, outputs)) or 'none'})")
    out = outputs[OUTPUT_PROBABILITIES]
    probs = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"]).reshape(-1, 10)
    digits_out = outputs.get(OUTPUT_DIGITS)
    digits = (
        np.asarray(digits_out["data"], dtype=np.int64).reshape(-1) if digits_out is not None else probs.argmax(axis=1)
    )
    if len(digits) != len(probs):
        raise ValueError(f"{len(probs)} probability rows but {len(digits)} digits")
    return probs, digits


def model_settings(*, version: str, max_batch: int, uri: str = "./model", name: str | None = None) -> dict[str, Any]:
    """The ``model-settings.json`` MLServer reads: the runtime, the artifact and the declared tensors.

    ``name`` is always written: Seldon and KServe set ``MLSERVER_MODEL_NAME``, which would
    otherwise rename the model. No ``platform``: the runtime sets it when it loads the model, from
    what serves it (``onnxruntime`` or ``pytorch``)."""
    return {
        "name": name or MODEL_NAME,
        "implementation": "mnistkit.serving_v2.MnistRuntime",
        "versions": [version],
        **metadata_tensors(max_batch),
        "parameters": {"uri": uri, "version": version, "extra": {"max_batch": max_batch}},
    }
