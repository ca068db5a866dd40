"""Hostile requests for a served model, sent as raw HTTP so nothing tidies them on the way.

``CASES`` maps a class name to a request and the 4xx it must get. The same table is sent to
the launcher on loopback (tests/test_hostile.py) and to the built image (docker tests).
Sizes assume the default limits (MNISTKIT_MAX_BODY 4 MiB, MNISTKIT_MAX_BATCH 256).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Request", "Response", "CASES", "GOOD", "send", "png"]

PREDICT = "/api/v1.0/predictions"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Request:
    status: int  # what the server must answer
    body: bytes = b""
    method: str = "POST"
    path: str = PREDICT
    content_type: str | None = "application/json"
    chunked: bool = False
    content_length: int | None = None  # a lie, when set
    raw_body: bytes | None = None  # sent as is after the headers (broken framing)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0
    json: dict = field(default_factory=dict)


def _chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        part = body[i : i + size]
        yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def send(host: str, port: int, req: Request, timeout: float = 60) -> Response:
    """Send ``req`` over a new connection and read the whole answer (the server closes)."""
    head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if req.content_type:
        head.append(f"Content-Type: {req.content_type}")
    if req.chunked:
        head.append("Transfer-Encoding: chunked")
    elif req.method in ("POST", "PUT") or req.body:
        head.append(f"Content-Length: {req.content_length if req.content_length is not None else len(req.body)}")
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            if req.raw_body is not None:
                s.sendall(req.raw_body)
            elif req.chunked:
                for chunk in _chunks(req.body):
                    s.sendall(chunk)
            else:
                s.sendall(req.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; its answer is still readable
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    return _parse(data, time.monotonic() - started)


def _parse(data: bytes, seconds: float) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return Response(0, {}, data, seconds)  # no answer at all (a reset, or nothing)
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2 :]
        body = out
    resp = Response(int(lines[0].split()[1]), headers, body, seconds)
    try:
        resp.json = json.loads(body)
    except ValueError:
        pass
    return resp


def png(width: int, height: int, rows: bytes | None = None, *, truncate: int | None = None) -> bytes:
    """A grey PNG of any claimed size; ``rows`` (default all zero) is compressed as IDAT,
    so a huge canvas of zeros stays a small file (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    if rows is None:
        comp = zlib.compressobj(9)
        line = b"\0" * (width + 1)
        idat = b"".join(comp.compress(line) for _ in range(height)) + comp.flush()
    else:
        idat = zlib.compress(rows, 9)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return data[:truncate] if truncate else data


def dds() -> bytes:
    """A DDS header with pixel-format flags 0: Pillow's DDS decoder raises NotImplementedError."""
    header = struct.pack("<7I", 124, 0x1007, 28, 28, 0, 0, 0) + b"\0" * 44 + struct.pack("<2I", 32, 0) + b"\0" * 44
    return b"DDS " + header + b"\0" * 800


def _real_png() -> bytes:
    from mnistkit.serving import golden_image

    return golden_image()


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _b64(data: bytes) -> bytes:
    return _j({"binData": base64.b64encode(data).decode()})


def _image(n: int = 1, value: int = 0) -> list[list[int]]:
    return [[value] * 784 for _ in range(n)]


def _multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "mnistkitboundary"
    buf = io.BytesIO()
    buf.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'.encode()
    )
    buf.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode())
    return buf.getvalue(), f"multipart/form-data; boundary={boundary}"


def _multipart_field(name: str, value: str) -> tuple[bytes, str]:
    boundary = "mnistkitboundary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--{boundary}--\r\n'
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def _cases() -> dict[str, Request]:
    big = b'{"data": {"ndarray": [' + b",".join([b"[" + b"0," * 783 + b"0]"] * 2800) + b"]}}"  # ~4.4 MB
    form, form_type = _multipart("binData", "x.bin", b"\x00\x01 not an image")
    deep_form, deep_form_type = _multipart_field("data", "[" * 5000 + "]" * 5000)
    return {
        "malformed JSON": Request(400, b'{"data": {"ndarray": [[0, 0'),
        "deep nesting 100k [": Request(400, b"[" * 100_000 + b"]" * 100_000),
        "deep nesting of objects": Request(400, b'{"a": ' * 200 + b"1" + b"}" * 200),
        "body over the limit": Request(413, big),
        "body over the limit, chunked": Request(413, big, chunked=True),
        "47 MB body": Request(413, b"[" + b"0," * (23 * MIB) + b"0]"),
        "Content-Length larger than the body": Request(413, b"{}", content_length=1 << 40),
        "wrong content type": Request(415, _j({"data": {"ndarray": _image()}}), content_type="text/plain"),
        "no content type": Request(415, _j({"data": {"ndarray": _image()}}), content_type=None),
        "strings as pixels": Request(400, _j({"data": {"ndarray": [["a"] * 784]}})),
        "NaN": Request(400, b'{"data": {"tensor": {"shape": [784], "values": [' + b"0," * 783 + b"NaN]}}}"),
        "Infinity": Request(400, b'{"data": {"ndarray": [[' + b"0," * 783 + b"-Infinity]]}}"),
        "1e400": Request(400, b'{"data": {"ndarray": [[' + b"0," * 783 + b"1e400]]}}"),
        "a 5000-digit integer": Request(400, b'{"data": {"ndarray": [[' + b"0," * 783 + b"9" * 5000 + b"]]}}"),
        "out of range": Request(400, _j({"data": {"ndarray": _image(1, 300)}})),
        "negative pixels": Request(400, _j({"data": {"ndarray": _image(1, -1)}})),
        "null pixels": Request(400, _j({"data": {"ndarray": [[None] * 784]}})),
        "empty input": Request(400, _j({"data": {"ndarray": []}})),
        "empty body": Request(400, b""),
        "empty object": Request(400, b"{}"),
        "ragged arrays": Request(400, _j({"data": {"ndarray": [[0] * 784, [0] * 3]}})),
        "wrong element count": Request(400, _j({"data": {"ndarray": [[0] * 700]}})),
        "wrong shape": Request(400, _j({"data": {"tensor": {"shape": [1, 3, 28, 28], "values": [0] * 2352}}})),
        "shape and values disagree": Request(400, _j({"data": {"tensor": {"shape": [2, 784], "values": [0] * 784}}})),
        "shape claiming 10^9 elements": Request(400, _j({"data": {"tensor": {"shape": [10**9], "values": [0]}}})),
        "negative shape": Request(400, _j({"data": {"tensor": {"shape": [-1, -784], "values": [0] * 784}}})),
        "fractional shape": Request(400, _j({"data": {"tensor": {"shape": [784.5], "values": [0] * 784}}})),
        "tensor values not a list": Request(400, _j({"data": {"tensor": {"shape": [784], "values": "0" * 784}}})),
        "batch over the limit": Request(
            400, _j({"data": {"tensor": {"shape": [257, 784], "values": [0] * 257 * 784}}})
        ),
        "corrupt PNG": Request(400, _b64(_real_png()[:40] + b"\xff" * 200)),
        "truncated PNG": Request(400, _b64(_real_png()[: len(_real_png()) // 2])),
        "non-image binData": Request(400, _b64(b"MZ\x90\x00 an executable, not an image" * 10)),
        "binData not base64": Request(400, _j({"binData": "@@@ not base64 @@@"})),
        "binData not a string": Request(400, _j({"binData": 12345})),
        "decompression bomb PNG": Request(400, _b64(png(30000, 30000))),
        "1x1 image": Request(400, _b64(png(1, 1, b"\0\0"))),
        "strData": Request(400, _j({"strData": "seven"})),
        "jsonData": Request(400, _j({"jsonData": {"pixels": [0] * 784}})),
        "data not an object": Request(400, _j({"data": 5})),
        "top-level array": Request(400, _j([1, 2, 3])),
        "invalid UTF-8": Request(400, b'{"strData": "\xff\xfe\xfd"}'),
        "multipart with a non-image": Request(400, form, content_type=form_type),
        "deep nesting in a multipart field": Request(400, deep_form, content_type=deep_form_type),
        "deep nesting in ?json=": Request(400, method="GET", path="/predict?json=" + "%5B" * 1300, content_type=None),
        "broken chunked framing": Request(400, chunked=True, raw_body=b"zz\r\nnot hex\r\n0\r\n\r\n"),
        "unknown route": Request(404, method="GET", path="/v2/models/mnist/infer"),
        "POST to an unknown route": Request(404, _j({}), path="/v2/models/mnist/infer"),
        "path traversal": Request(404, method="GET", path="/../../etc/passwd"),
        "a route of another service type": Request(404, _j({"data": {"ndarray": _image()}}), path="/transform-input"),
        "GET on the predictions route": Request(405, method="GET", path=PREDICT),
        "DELETE": Request(405, method="DELETE", path="/predict"),
        # found by review: each was a 500 (or hours of CPU, or no limit at all) before
        "an unterminated string of escaped quotes": Request(400, b"[" * 33 + b'"' + b'\\"' * 200_000),
        "GET with a body over the limit": Request(413, big, method="GET", path="/predict"),
        "nested tensor values": Request(400, _j({"data": {"tensor": {"shape": [1], "values": [[0] * 784]}}})),
        "booleans as tensor values": Request(400, _j({"data": {"tensor": {"shape": [784], "values": [True] * 784}}})),
        "a shape of 41 dimensions": Request(
            400, _j({"data": {"tensor": {"shape": [1] * 40 + [784], "values": [0] * 784}}})
        ),
        "meta not an object": Request(400, _j({"meta": 5, "data": {"ndarray": _image()}})),
        "meta.tags not an object": Request(400, _j({"meta": {"tags": 5}, "data": {"ndarray": _image()}})),
        "data and binData": Request(
            400, _j({"data": {"ndarray": _image()}, "binData": base64.b64encode(_real_png()).decode()})
        ),
        "?json= that is not JSON": Request(400, method="GET", path="/predict?json=notjson", content_type=None),
        "data.tensor null": Request(400, _j({"data": {"tensor": None}})),
        "data.ndarray null": Request(400, _j({"data": {"ndarray": None}})),
        "data null beside binData": Request(400, _j({"data": None, "binData": base64.b64encode(_real_png()).decode()})),
        "a DDS file as binData": Request(400, _b64(dds())),
        "feedback whose truth does not fit its shape": Request(
            400,
            _j(
                {
                    "request": {"data": {"ndarray": _image()}},
                    "truth": {"data": {"tensor": {"shape": [2], "values": [1]}}},
                }
            ),
            path="/api/v1.0/feedback",
        ),
    }


CASES = _cases()


def _good() -> dict[str, Request]:
    """Requests the guard must let through (200), so a guard that refuses all is caught."""
    from urllib.parse import quote

    one = {"data": {"names": [], "tensor": {"shape": [784], "values": [0] * 784}}}
    form, form_type = _multipart("binData", "digit.png", _real_png())
    # JSON-looking bytes inside a file upload are not JSON: a comment chunk full of brackets
    png = _real_png()
    text = b"Comment\0" + b"[{" * 200
    bracketed = png[:-12] + struct.pack(">I", len(text)) + b"tEXt" + text
    bracketed += struct.pack(">I", zlib.crc32(b"tEXt" + text)) + png[-12:]
    noisy, noisy_type = _multipart("binData", "digit.png", bracketed)
    # the largest batch, as floats written the long way: it must fit the default body limit
    widest = _j({"data": {"ndarray": [[254.99999999999997] * 784] * 256}})
    return {
        "the 2018 request": Request(200, _j(one)),
        "the largest batch, long floats": Request(200, widest),
        "the largest batch, chunked": Request(200, widest, chunked=True),
        "a PNG as binData": Request(200, _b64(_real_png())),
        "a PNG as a multipart upload": Request(200, form, content_type=form_type),
        "a PNG full of brackets as a multipart upload": Request(200, noisy, content_type=noisy_type),
        "form-encoded json=": Request(
            200, b"json=" + quote(json.dumps(one)).encode(), content_type="application/x-www-form-urlencoded"
        ),
        "feedback": Request(
            200,
            _j({"request": {"data": {"ndarray": _image()}}, "truth": {"data": {"ndarray": [[7]]}}, "reward": 1}),
            path="/api/v1.0/feedback",
        ),
        "health ping": Request(200, method="GET", path="/health/ping", content_type=None),
        "health status": Request(200, method="GET", path="/health/status", content_type=None),
        "metadata": Request(200, method="GET", path="/metadata", content_type=None),
    }


GOOD = _good()
