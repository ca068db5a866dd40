"""What the V2 tests share: the MLServer venv's Python, a raw HTTP helper, the hostile payload table."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import urllib.parse
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mnistkit.pixels import encode_png
from support import REPO
from support.hostile import dds

#: the venv `make` creates for MLServer (protobuf>=5 cannot live beside seldon-core 1.17.1)
MLS_PYTHON = REPO / ".venv-mlserver" / "bin" / "python"


def mlserver_python() -> str:
    if not MLS_PYTHON.exists():
        pytest.fail(f"{MLS_PYTHON} is missing: `make .venv-mlserver/.installed` (make test) creates it")
    return str(MLS_PYTHON)


def request(
    url: str, method: str = "POST", body: bytes | dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """One raw request (any body, any headers); returns (status, body, headers)."""
    u = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, u.path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def pixels_input(data, shape, datatype="INT32", name="pixels"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def images_input(blobs, shape=None):
    data = [base64.b64encode(b).decode() for b in blobs]
    return {"inputs": [{"name": "images", "shape": shape or [len(data)], "datatype": "BYTES", "data": data}]}


def blank_png(side: int) -> bytes:
    """A side x side black PNG: a few kB on the wire, side^2 pixels to decode and resize."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, format="PNG")  # 36 MP of zeros in a few kB
    return buf.getvalue()


ONE = [0] * 784
HOSTILE = {
    "malformed json": (b"{bad", 400, "JSON"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, 400, "depth"),
    "deep nesting inside data": (
        b'{"inputs":[{"name":"pixels","shape":[1],"datatype":"FP32","data":' + b"[" * 900 + b"1" + b"]" * 900 + b"}]}",
        400,
        "nested",
    ),
    "json array body": (b"[1, 2]", 400, "not a V2 inference request"),
    "no inputs key": ({"outputs": []}, 400, "inputs"),
    "empty inputs": ({"inputs": []}, 400, "exactly one input"),
    "two inputs": ({"inputs": [pixels_input(ONE, [1, 784])["inputs"][0]] * 2}, 400, "exactly one input"),
    "strings as pixels": (pixels_input(["a"] * 784, [1, 784]), 400, "strings"),
    "NaN literal": (b'{"inputs":[{"name":"pixels","shape":[1],"datatype":"FP32","data":[NaN]}]}', 400, "JSON"),
    "1e400": (b'{"inputs":[{"name":"pixels","shape":[1],"datatype":"FP32","data":[1e400]}]}', 400, "JSON"),
    "out of range": (pixels_input([300] + ONE[1:], [1, 784]), 400, "0..255"),
    "negative": (pixels_input([-1] + ONE[1:], [1, 784]), 400, "0..255"),
    "empty data": (pixels_input([], [0, 784]), 400, "no pixels"),
    "ragged": (pixels_input([[1, 2], [3]], [2, 2]), 400, "ragged"),
    "shape does not match values": (pixels_input(ONE[:783], [1, 784]), 400, "needs 784 values"),
    "shape claims 10^9 values": (pixels_input(ONE, [1_000_000, 1000]), 400, "over the limit"),
    "negative shape": (pixels_input(ONE, [-1, 784]), 400, "negative"),
    "batch over the limit": (pixels_input([0] * 784 * 257, [257, 784]), 400, "over the limit"),
    "unknown shape": (pixels_input(ONE, [16, 49]), 400, "cannot read shape"),
    "floats declared INT32": (pixels_input([0.5] * 784, [1, 784]), 400, "non-integers"),
    "BOOL datatype": (pixels_input([True] * 784, [1, 784], "BOOL"), 400, "datatype"),
    "unknown datatype": (pixels_input(ONE, [1, 784], "INT99"), 400, "datatype"),
    "wrong input name": (pixels_input(ONE, [1, 784], name="x"), 400, "named 'pixels'"),
    "not base64": ({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}, 400, "base64"),
    "non-image bytes": (images_input([b"hello world, no image"]), 400, "not an image"),
    "corrupt png": (images_input([b"\x89PNG\r\n\x1a\n" + os.urandom(200)]), 400, "not an image"),
    "truncated png": (
        images_input([encode_png(np.random.default_rng(0).integers(0, 256, (28, 28)))[:300]]),
        400,
        "not an image",
    ),
    "1x1 image": (images_input([png(np.zeros((1, 1), np.uint8))]), 400, "at least"),
    "decompression bomb": (images_input([png_bomb()]), 400, "over the limit"),
    "unknown output": ({**pixels_input(ONE, [1, 784]), "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    "body over the limit": (b"x" * (5 * 1024 * 1024), 413, "over the limit"),
    # found by review: a 500, a misleading message, and ~15 s of CPU per request before
    "a shape of 41 dimensions": (pixels_input(ONE, [1] * 40 + [784]), 400, "dimensions"),
    "booleans declared INT32": (pixels_input([True] * 784, [1, 784]), 400, "booleans"),
    "large blank images, over the limit together": (images_input([blank_png(2048)] * 5), 400, "all the images"),
    "a DDS file": (images_input([dds()]), 400, "not an image"),
}


#: a V2 gRPC client (run with the MLServer venv's Python: ADDRESS PIXELS-JSON PNG-FILE): pixels, a PNG,
#: a refused input, then an attempt to unload the model; prints the answers as JSON
GRPC = """
import json, sys
import grpc
from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as pbg

address, pixels, png = sys.argv[1], json.loads(sys.argv[2]), open(sys.argv[3], "rb").read()
stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(address))
Tensor, Contents = pb.ModelInferRequest.InferInputTensor, pb.InferTensorContents
answers = []
for tensor in (
    Tensor(name="pixels", datatype="INT32", shape=[1, 784], contents=Contents(int_contents=pixels)),
    Tensor(name="images", datatype="BYTES", shape=[1], contents=Contents(bytes_contents=[png])),
):
    r = stub.ModelInfer(pb.ModelInferRequest(model_name="mnist", inputs=[tensor]))
    out = {o.name: o for o in r.outputs}
    answers.append({"probabilities": list(out["probabilities"].contents.fp32_contents),
                    "digits": list(out["digits"].contents.int64_contents)})
try:
    stub.ModelInfer(pb.ModelInferRequest(model_name="mnist", inputs=[Tensor(name="x", datatype="INT32", shape=[1])]))
except grpc.RpcError as e:
    answers.append({"code": e.code().name, "details": e.details()})
try:
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist"))
    answers.append({"code": "OK"})
except grpc.RpcError as e:
    answers.append({"code": e.code().name, "details": e.details()})
print(json.dumps(answers))
"""
