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
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, QueryError
from .files import os_reason
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
#: the most an answer may hold: 256 rows of 10 probabilities are ~60 KB of JSON, so 8 MiB fits any sane batch
MAX_ANSWER_BYTES = 8 * 2**20
MAX_TIMEOUT = 86400.0  # seconds: --timeout is at most a day
MAX_RETRIES = 100
MAX_BACKOFF = 30.0  # seconds: the longest wait between two tries
#: how far a probability may stray outside 0..1 (float32 rounding) before the answer is refused
TOLERANCE = 1e-3
_ERROR_BODY_BYTES = 64 * 2**10  # of a 4xx/5xx answer only its message is shown: read no more than this
_NOT_IN_URLS = re.compile(r"[^\x21-\x7e]")  # spaces, control characters and non-ASCII (http.client refuses them)
_SEGMENT = re.compile(r"(?:(?![/?#%])[\x21-\x7e])+")  # one URL path segment that needs no escapes
_HOST_VALUE = re.compile(r"[\x21-\x7e]+")  # a Host header: printable ASCII, no spaces


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
        if self.url is not None:  # an empty --url is refused, not taken for the default endpoint
            return _http_url(self.url, "--url", "http://127.0.0.1:9000/api/v1.0/predictions")
        shown = self.host
        host = _http_url(shown if "://" in shown else f"http://{shown}", "--endpoint", "127.0.0.1:9000", shown)
        names = {"namespace": self.namespace, "deployment": self.deployment, "model": self.model}
        for name, value in names.items():
            if "{" + name + "}" in routes[route] and not _SEGMENT.fullmatch(value):
                raise ConfigError(
                    f"--{name} {value!r} cannot be part of a URL path; give a name such as 'mnist' "
                    "(letters, digits, '-', '.', '_'; no spaces, '/', '?', '#' or '%')"
                )
        return host.rstrip("/") + routes[route].format(**names)

    def headers(self) -> dict[str, str]:
        """Extra request headers: the Host that KServe's ingress routes by."""
        if self.host_header is not None:
            if not _HOST_VALUE.fullmatch(self.host_header):
                raise ConfigError(
                    f"--host-header {self.host_header!r} is not a host name: give printable ASCII without spaces "
                    "or control characters, e.g. mnist.default.example.com"
                )
            return {"Host": self.host_header}
        if self.protocol == "v2" and self.route == "kserve":
            return {"Host": f"{self.deployment}.{self.namespace}.{KSERVE_DOMAIN}"}
        return {}


def _http_url(url: str, flag: str, example: str, shown: str | None = None) -> str:
    """``url`` when it is an http(s) URL with a host and a port in range; else a one-line error
    (before any request). ``shown`` is what the user typed, when ``url`` was made from it."""
    given = url if shown is None else shown
    if _NOT_IN_URLS.search(url):
        raise ConfigError(
            f"{flag} {given!r} holds a space, a control character or a non-ASCII character; "
            "percent-encode it (a space is %20) or, in a host name, use its xn-- form"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} {given!r} is not an http(s) URL with a host; e.g. {example}")
    try:
        parts.hostname.encode("idna")  # what the resolver will do with it
    except UnicodeError:
        raise ConfigError(
            f"{flag} {given!r} has a host name with an empty or over-long label; e.g. {example}"
        ) from None
    after_host = parts.netloc.rpartition("@")[2].rpartition("]")[2]  # an IPv6 host is in [...]
    port = after_host.rpartition(":")[2] if ":" in after_host else ""
    if port and not re.fullmatch(r"[0-9]+", port):
        raise ConfigError(f"{flag} {given!r} has a port that is not a number; e.g. {example}")
    if port and not 1 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {given!r} has port {int(port)}, out of range: a port is 1..65535")
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
    max_answer_bytes: int = MAX_ANSWER_BYTES  # an answer larger than this is refused, not read whole

    @property
    def payload_kind(self) -> str:
        return self.payload or ("pixels" if self.endpoint.protocol == "v2" else "tensor")

    def validate(self) -> "QueryConfig":
        allowed = PAYLOADS_V2 if self.endpoint.protocol == "v2" else PAYLOADS
        if self.payload_kind not in allowed:
            raise ConfigError(
                f"payload {self.payload_kind!r} is not a {self.endpoint.protocol} payload; use one of {', '.join(allowed)}"
            )
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= MAX_TIMEOUT):
            raise ConfigError(
                f"--timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:g} (a day); got {self.timeout}"
            )
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ConfigError(f"--retries must be 0..{MAX_RETRIES} (got {self.retries})")
        if not (math.isfinite(self.backoff) and 0 <= self.backoff <= MAX_TIMEOUT):
            raise ConfigError(f"backoff must be 0..{MAX_TIMEOUT:g} seconds (got {self.backoff})")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1 (got {self.max_batch})")
        if self.max_answer_bytes < 1:
            raise ConfigError(f"max_answer_bytes must be at least 1 (got {self.max_answer_bytes})")
        self.endpoint.predictions_url()
        self.endpoint.headers()
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
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise QueryError(f"cannot read {path}: {os_reason(e)}") from None
    if magic != b"\x93NUMPY":  # an empty file, text, or an .npz (a zip) saved under .npy
        what = "it is empty" if not magic else "it does not start as one; save arrays with numpy.save"
        raise QueryError(f"{path} is not a .npy array ({what})")
    try:
        # mapped, not read: a header may claim far more data than the file holds
        arr = np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
        why = "shorter than its header says" if "mmap length" in str(e) else _one_line(str(e))
        raise QueryError(f"{path} is not a readable .npy array ({why})") from None
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
        try:
            data = p.read_bytes()
        except OSError as e:
            raise QueryError(f"cannot read {p}: {os_reason(e)}") from None
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
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as e:
        raise QueryError(f"the endpoint's answer is not a Seldon prediction of 10 classes ({_one_line(e)})") from None
    return probs


def _one_line(text: object, most: int = 300) -> str:
    """Text a server (or a message built from its answer) supplied, as one line of at most ``most``
    characters: newlines, tabs and other control characters become spaces."""
    line = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", str(text)).split())
    return line if len(line) <= most else line[: most - 3] + "..."


def _error_text(body: bytes) -> str:
    """The message of a 4xx/5xx answer: V2's ``error``, Seldon's ``status.info``, an HTML title or
    the first line, on one line."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        if body.lstrip()[:1] in (b"{", b"["):
            return "an answer that is not JSON the client can read"
        answer = None
    if isinstance(answer, dict):
        if isinstance(answer.get("error"), str):  # V2: {"error": "..."}
            return _one_line(answer["error"]) or "(empty error)"
        status = answer.get("status")
        info = (status.get("info") or status.get("reason")) if isinstance(status, dict) else None
        if info:
            return _one_line(info)
    text = body.decode("utf-8", "replace").strip()
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    if title:  # a gateway's HTML error page
        return _one_line(title.group(1))
    lines = text.splitlines()
    return _one_line(lines[0], 200) if lines else "(empty body)"


class _TooSlow(TimeoutError):
    """The whole answer did not arrive within the deadline."""


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline passed: end the exchange wherever it is (a read blocked in another thread
    returns at once). The base class's shutdown, so a TLS socket is cut the same way."""
    cut.set()
    if conn.sock is not None:
        try:
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _read(r: http.client.HTTPResponse, most: int) -> tuple[bytes, bool]:
    """At most ``most`` bytes of the body, and whether that is all of it. A 2xx body that says it
    is larger is not read at all; of any other, the first ``_ERROR_BODY_BYTES`` hold its message."""
    if 200 <= r.status < 300 and r.length is not None and r.length > most:
        return b"", False
    if not 200 <= r.status < 300:
        most = min(most, _ERROR_BODY_BYTES)
    chunks: list[bytes] = []
    size = 0
    while size <= most:
        chunk = r.read(min(2**16, most + 1 - size))
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:most], False


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` and the path to ask for. Through the proxy the environment names
    (``http_proxy``/``https_proxy``, less ``no_proxy``), as urllib's opener did: plain HTTP asks
    the proxy for the whole URL, HTTPS tunnels through it with CONNECT."""
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return kind(host, port, timeout=timeout), path
    via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    conn = kind(via.hostname or "", via.port or 80, timeout=timeout)
    if https:
        conn.set_tunnel(host, port)
        return conn, path
    return conn, urllib.parse.urlunsplit(("http", parts.netloc, parts.path or "/", parts.query, ""))


def _exchange(
    url: str, body: bytes, headers: dict[str, str], timeout: float, most: int
) -> tuple[int, str, bytes, bool]:
    """One POST, bounded: connecting, sending and the whole answer within ``timeout`` seconds (not
    per read: a server trickling bytes is cut off too), and at most ``most`` bytes of a 2xx body.
    No redirect is followed. Returns the status, the Location header, the body and whether it is whole."""
    conn, path = _connection(url, timeout)
    cut = threading.Event()
    watchdog = threading.Timer(timeout, _cut, (conn, cut))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.connect()
        if cut.is_set():
            raise _TooSlow()
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        raw, whole = _read(r, most)
    except (OSError, http.client.HTTPException):
        if cut.is_set():
            raise _TooSlow() from None
        raise
    finally:
        watchdog.cancel()
        conn.close()
    if cut.is_set():  # the cut may look like the end of a body that has no Content-Length
        raise _TooSlow()
    return r.status, r.getheader("Location") or "", raw, whole


def _json_answer(url: str, status: int, location: str, raw: bytes, whole: bool, most: int) -> dict[str, Any]:
    """The decoded 2xx answer, or the one-line ``QueryError`` for any other answer."""
    if 300 <= status < 400:
        where = _one_line(location) or "nowhere (no Location header)"
        raise QueryError(
            f"{url} answered {status}, a redirect to {where}; the client does not follow redirects: "
            "give the URL of the prediction endpoint itself with --url"
        )
    if not 200 <= status < 300:
        hint = ""
        if status in (404, 405, 501):
            v2 = "/v2/models/" in url
            hint = "; is --model the served model's name, and --route right?" if v2 else ""
            hint = hint or "; is it a Seldon endpoint, and is --route right?"
        raise QueryError(f"{url} answered {status}: {_error_text(raw)}{hint}")
    if not whole:
        raise QueryError(
            f"{url} answered more than {most / 2**20:g} MiB, the client's limit for an answer (a table of "
            "probabilities is far smaller); is it a prediction endpoint?"
        )
    try:
        return json.loads(raw)  # type: ignore[no-any-return]
    except RecursionError:
        why = "nested too deeply"
    except ValueError as e:
        why = _one_line(e, 100)
    raise QueryError(f"{url} answered {status} with something that is not JSON the client can read ({why})")


def _failure(url: str, e: Exception, timeout: float, tries: int) -> QueryError:
    """The one line for a request that got no answer, after ``tries`` tries."""
    if isinstance(e, TimeoutError):
        reason = f"no whole answer within the --timeout of {timeout:g} s"
    else:
        reason = _one_line(e, 200) or type(e).__name__
    return QueryError(f"cannot reach {url}: {reason} (after {tries} tries); is the endpoint right and up?")


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> dict[str, Any]:
    """POST JSON; retry connection errors, timeouts and 503 with exponential backoff.

    Each try must get its whole answer within ``timeout`` seconds, of at most ``max_bytes``.
    Raises ``QueryError`` with Seldon's ``status.info`` (or V2's ``error``) for 4xx/5xx answers,
    for a redirect (never followed), and for an answer that is not JSON the client can read.
    """
    body = json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    for attempt in range(retries + 1):
        try:
            status, location, raw, whole = _exchange(url, body, sent, timeout, max_bytes)
        except (OSError, http.client.HTTPException) as e:
            if attempt >= retries:
                raise _failure(url, e, timeout, attempt + 1) from None
            reason = _one_line(e, 200)
        else:
            if status != 503 or attempt >= retries:
                return _json_answer(url, status, location, raw, whole, max_bytes)
            reason = f"503 ({_error_text(raw)})"
        delay = min(backoff * 2**attempt, MAX_BACKOFF)
        log.debug("retrying %s in %.1fs: %s", url, delay, reason)
        time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")


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
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        raise QueryError(f"the endpoint's answer is not a V2 prediction of 10 classes ({_one_line(e)})") from None


def _checked(probs: np.ndarray, group: Sequence[Input], url: str) -> np.ndarray:
    """``probs`` when each is a finite number in 0..1 (give or take ``TOLERANCE``), clipped to 0..1;
    anything else is the server's fault, and printing it as a prediction would hide that."""
    if len(probs) != len(group):
        raise QueryError(f"sent {len(group)} images but got {len(probs)} predictions back")
    bad = ~np.isfinite(probs) | (probs < -TOLERANCE) | (probs > 1 + TOLERANCE)
    if bad.any():
        row, digit = (int(i) for i in np.argwhere(bad)[0])
        raise QueryError(
            f"{url} answered a probability of {probs[row, digit]:g} for digit {digit} of {group[row].name}, "
            "not a number in 0..1: the server is at fault (check the model it serves and its logs)"
        )
    return np.clip(probs, 0.0, 1.0)


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
            max_bytes=config.max_answer_bytes,
        )
        probs = _checked(_answer(response, protocol), group, url)
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
