"""The REST client, Seldon v1 and V2 (Open Inference Protocol): images or arrays in, digits
out. No torch, no docker.

v1 sends raw pixels 0..255 exactly as the 2018 client did (``data.tensor`` with the
flattened image), or ``data.ndarray``, or the encoded image as ``binData``; V2 sends them as
an INT32 ``pixels`` tensor or as base64 ``images`` (BYTES). Several images go as one
batched request. Routes::

    v1  ambassador       /seldon/<namespace>/<deployment>/api/v1.0/predictions   (Seldon Core 1.x)
        ambassador-v0.1  /seldon/<deployment>/api/v0.1/predictions               (the 2018 route)
        direct           /api/v1.0/predictions                                   (a microservice)
    V2  seldon           /seldon/<namespace>/<deployment>/v2/models/<model>/infer (protocol: v2)
        kserve           /v2/models/<model>/infer, Host: <deployment>.<namespace>.example.com
        direct           /v2/models/<model>/infer                                (the server itself)
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, QueryError
from .pixels import BadInput, as_batch, decode_image, encode_png

__all__ = [
    "ROUTES",
    "ROUTES_V2",
    "PROTOCOLS",
    "PAYLOADS",
    "PAYLOADS_V2",
    "Endpoint",
    "QueryConfig",
    "Input",
    "Prediction",
    "load_inputs",
    "build_payload",
    "parse_probabilities",
    "post_json",
    "predict",
]

log = logging.getLogger(__name__)

ROUTES = {
    "ambassador": "/seldon/{namespace}/{deployment}/api/v1.0/predictions",
    "ambassador-v0.1": "/seldon/{deployment}/api/v0.1/predictions",
    "direct": "/api/v1.0/predictions",
}
ROUTES_V2 = {
    "seldon": "/seldon/{namespace}/{deployment}/v2/models/{model}/infer",
    "kserve": "/v2/models/{model}/infer",
    "direct": "/v2/models/{model}/infer",
}
PROTOCOLS = ("v1", "v2")
PAYLOADS = ("tensor", "ndarray", "binData")
PAYLOADS_V2 = ("pixels", "images")
#: KServe's default ingress domain (its ``ingress.ingressDomain`` and Knative's ``config-domain`` in the quick start)
KSERVE_DOMAIN = "example.com"


@dataclass(frozen=True)
class Endpoint:
    """Where predictions are posted. Defaults match the 2018 walk-through: Ambassador
    port-forwarded to localhost:8003, deployment ``mnist`` in namespace ``seldon``."""

    host: str = "localhost:8003"
    deployment: str = "mnist"
    namespace: str = "seldon"
    route: str | None = None  # default: ambassador (v1), seldon (V2)
    url: str | None = None  # a full URL overrides everything else
    protocol: str = "v1"  # v1 (Seldon) or v2 (Open Inference Protocol)
    model: str = "mnist"  # the V2 model name
    host_header: str | None = None  # V2 kserve route: default <deployment>.<namespace>.example.com

    def predictions_url(self) -> str:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use v1 or v2")
        routes = ROUTES_V2 if self.protocol == "v2" else ROUTES
        route = self.route or ("seldon" if self.protocol == "v2" else "ambassador")
        if route not in routes:
            raise ConfigError(f"route {route!r} is not a {self.protocol} route; use one of {', '.join(routes)}")
        if self.url:
            return _http_url(self.url, "--url")
        host = _http_url(self.host if "://" in self.host else f"http://{self.host}", "--endpoint")
        path = routes[route].format(namespace=self.namespace, deployment=self.deployment, model=self.model)
        return host.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        """Extra request headers: the Host that KServe's ingress routes by."""
        if self.host_header:
            return {"Host": self.host_header}
        if self.protocol == "v2" and self.route == "kserve":
            return {"Host": f"{self.deployment}.{self.namespace}.{KSERVE_DOMAIN}"}
        return {}


def _http_url(url: str, flag: str) -> str:
    """``url`` when it is an http(s) URL with a host; else a one-line error (before any request)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{flag} {url!r} is not an http(s) URL with a host; e.g. http://127.0.0.1:9000/api/v1.0/predictions"
        )
    try:
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        raise ConfigError(f"{flag} {url!r} has a port that is not a number") from None
    return url


@dataclass(frozen=True)
class QueryConfig:
    endpoint: Endpoint = field(default_factory=Endpoint)
    payload: str | None = None  # default: tensor (v1), pixels (V2)
    batch: bool = True
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_batch: int = 256  # images per request at most: the servers' MNISTKIT_MAX_BATCH default

    @property
    def payload_kind(self) -> str:
        return self.payload or ("pixels" if self.endpoint.protocol == "v2" else "tensor")

    def validate(self) -> "QueryConfig":
        allowed = PAYLOADS_V2 if self.endpoint.protocol == "v2" else PAYLOADS
        if self.payload_kind not in allowed:
            raise ConfigError(
                f"payload {self.payload_kind!r} is not a {self.endpoint.protocol} payload; use one of {', '.join(allowed)}"
            )
        if self.timeout <= 0 or self.retries < 0:
            raise ConfigError("--timeout must be positive and --retries at least 0")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1 (got {self.max_batch})")
        self.endpoint.predictions_url()
        return self


@dataclass(frozen=True)
class Input:
    name: str
    pixels: np.ndarray  # (28, 28), raw intensities 0..255
    encoded: bytes | None = None  # the image file's bytes, for binData


@dataclass(frozen=True)
class Prediction:
    name: str
    digit: int
    probability: float
    runner_up: int
    runner_up_probability: float
    probabilities: list[float]
    response: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "digit": self.digit,
            "probability": self.probability,
            "runner_up": self.runner_up,
            "runner_up_probability": self.runner_up_probability,
            "probabilities": self.probabilities,
            "response": self.response,
        }


def _npy_inputs(path: Path) -> list[Input]:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise QueryError(f"{path} is not a readable .npy array ({e})") from None
    try:
        batch = as_batch(arr, what=str(path))  # the same shape rules the servers apply
    except BadInput as e:
        raise QueryError(str(e)) from None
    if len(batch) == 1:
        return [Input(str(path), batch[0])]
    return [Input(f"{path}[{i}]", a) for i, a in enumerate(batch)]


def load_inputs(paths: Sequence[str | Path], *, invert: bool = False) -> list[Input]:
    """Read image files (PNG, JPEG, GIF, BMP, WebP, TIFF, PNM) and ``.npy`` arrays as 28x28 pixels.

    Images of another size are resized, with a warning; ``invert`` turns black-on-white
    drawings into MNIST's white-on-black.
    """
    inputs: list[Input] = []
    for p in map(Path, paths):
        if p.is_dir():
            raise QueryError(f"{p} is a folder; give the image files in it (e.g. {p / '*.png'})")
        if not p.is_file():
            raise QueryError(f"no such file: {p}")
        if p.suffix.lower() == ".npy":
            inputs.extend(_npy_inputs(p))
            continue
        data = p.read_bytes()
        try:
            img = decode_image(data, invert=invert, name=str(p))
        except BadInput as e:
            raise QueryError(str(e)) from None
        if img.resized_from:
            w, h = img.resized_from
            log.warning(
                "warning: %s is %dx%d; resized to 28x28 (predictions on resized drawings are less reliable)", p, w, h
            )
        # binData sends the file as it is, unless it had to be changed to be read as MNIST
        encoded = data if img.resized_from is None and not invert else encode_png(img.pixels)
        inputs.append(Input(str(p), img.pixels, encoded))
    if not inputs:
        raise QueryError("no images given")
    return inputs


def _values(pixels: np.ndarray) -> list[Any]:
    arr = np.asarray(pixels)
    return arr.astype(np.int64).ravel().tolist() if np.all(arr == np.round(arr)) else arr.ravel().tolist()


def build_payload(inputs: Sequence[Input], kind: str = "tensor") -> dict[str, Any]:
    """The Seldon request body for ``inputs``. One image as ``tensor`` is exactly the
    2018 payload: ``{"data": {"names": [], "tensor": {"shape": [784], "values": [...]}}}``."""
    if kind == "binData":
        if len(inputs) != 1:
            raise ConfigError("binData carries one image per request")
        import base64

        return {"binData": base64.b64encode(inputs[0].encoded or encode_png(inputs[0].pixels)).decode("ascii")}
    stack = np.stack([np.asarray(i.pixels).reshape(784) for i in inputs])  # (n, 784)
    if kind == "tensor":
        shape = [784] if len(inputs) == 1 else [len(inputs), 784]
        return {"data": {"names": [], "tensor": {"shape": shape, "values": _values(stack)}}}
    if kind == "ndarray":
        return {"data": {"names": [], "ndarray": [_values(row) for row in stack]}}
    raise ConfigError(f"unknown payload {kind!r}; use one of {', '.join(PAYLOADS)}")


def parse_probabilities(response: dict[str, Any]) -> np.ndarray:
    """``(n, 10)`` probabilities from a Seldon response (tensor or ndarray)."""
    data = response.get("data") if isinstance(response, dict) else None
    try:
        if data and "tensor" in data:
            t = data["tensor"]
            probs = np.asarray(t["values"], dtype=np.float64).reshape(t["shape"])
        elif data and "ndarray" in data:
            probs = np.asarray(data["ndarray"], dtype=np.float64)
        else:
            raise ValueError("no data.tensor or data.ndarray")
        probs = probs.reshape(-1, 10)
    except (ValueError, TypeError, KeyError) as e:
        raise QueryError(f"the endpoint's answer is not a Seldon prediction of 10 classes ({e})") from None
    return probs


def _error_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
        if isinstance(answer.get("error"), str):  # V2: {"error": "..."}
            return str(answer["error"])
        status = answer.get("status", {})
        info = status.get("info") or status.get("reason")
        if info:
            return str(info)
    except (ValueError, AttributeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    if title:  # a gateway's HTML error page
        return title.group(1).strip()
    lines = text.splitlines()
    return lines[0][:200] if lines else "(empty body)"


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST JSON; retry connection errors and 503 with exponential backoff.

    Raises ``QueryError`` with Seldon's ``status.info`` for 4xx/5xx answers.
    """
    body = json.dumps(payload).encode()
    attempt = 0
    while True:
        req = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
            try:
                return json.loads(raw)
            except ValueError:
                raise QueryError(f"{url} answered with something that is not JSON") from None
        except urllib.error.HTTPError as e:
            text = _error_text(e.read())
            if e.code == 503 and attempt < retries:
                reason = f"503 ({text})"
            else:
                hint = ""
                if e.code in (404, 405, 501):
                    v2 = "/v2/models/" in url
                    hint = "; is --model the served model's name, and --route right?" if v2 else ""
                    hint = hint or "; is it a Seldon endpoint, and is --route right?"
                raise QueryError(f"{url} answered {e.code}: {text}{hint}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            reason = str(getattr(e, "reason", e))
            if attempt >= retries:
                raise QueryError(
                    f"cannot reach {url}: {reason} (after {attempt + 1} tries); is the endpoint right and up?"
                ) from None
        attempt += 1
        delay = backoff * 2 ** (attempt - 1)
        log.debug("retrying %s in %.1fs: %s", url, delay, reason)
        time.sleep(delay)


def _v2_request(group: Sequence[Input], kind: str) -> dict[str, Any]:
    from .protocol_v2 import images_request, pixels_request

    if kind == "images":
        return images_request([i.encoded or encode_png(i.pixels) for i in group])
    return pixels_request(np.stack([np.asarray(i.pixels) for i in group]))  # INT32 [n, 784]


def _answer(response: dict[str, Any], protocol: str) -> np.ndarray:
    if protocol != "v2":
        return parse_probabilities(response)
    from .protocol_v2 import read_outputs

    try:
        return read_outputs(response)[0]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise QueryError(f"the endpoint's answer is not a V2 prediction of 10 classes ({e})") from None


def predict(inputs: Sequence[Input], config: QueryConfig | None = None) -> list[Prediction]:
    """Send ``inputs`` and decode each answer: digit, probability and runner-up."""
    config = (config or QueryConfig()).validate()
    url, kind, protocol = config.endpoint.predictions_url(), config.payload_kind, config.endpoint.protocol
    size = config.max_batch if config.batch and kind != "binData" else 1
    groups = [list(inputs[i : i + size]) for i in range(0, len(inputs), size)]  # what one request may carry
    out: list[Prediction] = []
    for group in groups:
        body = _v2_request(group, kind) if protocol == "v2" else build_payload(group, kind)
        response = post_json(
            url,
            body,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
            headers=config.endpoint.headers(),
        )
        probs = _answer(response, protocol)
        if len(probs) != len(group):
            raise QueryError(f"sent {len(group)} images but got {len(probs)} predictions back")
        for item, p in zip(group, probs, strict=False):
            order = np.argsort(p)[::-1]
            out.append(
                Prediction(
                    item.name,
                    int(order[0]),
                    float(p[order[0]]),
                    int(order[1]),
                    float(p[order[1]]),
                    p.tolist(),
                    response,
                )
            )
    return out
