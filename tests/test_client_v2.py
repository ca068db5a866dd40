"""mnistkit.client and mnistkit-query with --protocol v2: the protocol_v2 rules on their own, the
routes, and the real V2 server (MLServer in its venv) directly and behind real nginx routing like
KServe's ingress (by Host) and Seldon's (by prefix), cross-checked with tritonclient[http]."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from mnistkit.cli.query import main as query_main
from mnistkit.client import Endpoint, Input, QueryConfig, predict
from mnistkit.errors import ConfigError
from mnistkit.pixels import BadInput, encode_png
from mnistkit.protocol_v2 import Tensor, images_request, pixels_from_tensor, pixels_request, read_outputs
from support import REPO
from support.v2 import mlserver_python

IMAGES = REPO / "examples" / "images"
LABELS = json.loads((IMAGES / "labels.json").read_text())


@pytest.mark.parametrize(
    ("shape", "datatype", "n"),
    [([784], "INT32", 1), ([1, 784], "UINT8", 1), ([3, 28, 28], "FP32", 3), ([2, 1, 28, 28], "FP64", 2)],
)
def test_pixel_tensors_read_as_n_images(shape, datatype, n):
    data = (np.arange(int(np.prod(shape))) % 256).tolist()
    pixels = pixels_from_tensor(Tensor("pixels", datatype, shape, data), max_batch=8)
    assert pixels.shape == (n, 28, 28) and pixels.dtype == np.float32 and pixels.max() == 255


def test_requests_read_back_as_the_pixels_sent(mnist):
    digits = mnist.test_images[:3].numpy()
    inp = pixels_request(digits)["inputs"][0]
    assert inp["datatype"] == "INT32" and inp["shape"] == [3, 784] and all(isinstance(v, int) for v in inp["data"])
    back = pixels_from_tensor(Tensor(**inp), max_batch=8)
    assert np.array_equal(back, digits.astype(np.float32))
    img = images_request([encode_png(d) for d in digits])["inputs"][0]
    assert img["datatype"] == "BYTES" and img["shape"] == [3]
    assert np.array_equal(pixels_from_tensor(Tensor(**img), max_batch=8), digits.astype(np.float32))


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({"outputs": []}, "no 'probabilities' output"),
        ({"outputs": [{"name": "probabilities", "shape": [1, 9], "data": [0.1] * 9}]}, "reshape"),
        ({"error": "x"}, "no 'probabilities' output"),
    ],
    ids=["no outputs", "not 10 classes", "an error body"],
)
def test_answers_that_are_not_predictions_are_refused(response, message):
    with pytest.raises(ValueError, match=message):
        read_outputs(response)


def test_bytes_from_grpc_are_read_raw_or_as_base64(mnist):
    png = encode_png(mnist.test_images[0].numpy())
    for value in (png, base64.b64encode(png)):
        assert pixels_from_tensor(Tensor("images", "BYTES", [1], [value]), max_batch=1).shape == (1, 28, 28)
    with pytest.raises(BadInput, match="named 'images'"):
        pixels_from_tensor(Tensor("pixels", "BYTES", [1], ["aGk="]), max_batch=1)


@pytest.mark.parametrize(
    ("endpoint", "url", "headers"),
    [
        (Endpoint("h:1", protocol="v2"), "http://h:1/seldon/seldon/mnist/v2/models/mnist/infer", {}),
        (Endpoint("h:1", protocol="v2", route="direct", model="m"), "http://h:1/v2/models/m/infer", {}),
        (
            Endpoint("h:1", "mnist", "default", "kserve", protocol="v2"),
            "http://h:1/v2/models/mnist/infer",
            {"Host": "mnist.default.example.com"},
        ),
        (
            Endpoint(url="http://x/v2/models/mnist/infer", protocol="v2", host_header="mnist-default.example.com"),
            "http://x/v2/models/mnist/infer",
            {"Host": "mnist-default.example.com"},
        ),
        (Endpoint("h:1"), "http://h:1/seldon/seldon/mnist/api/v1.0/predictions", {}),
    ],
    ids=["v2 default seldon", "v2 direct", "kserve host", "url and host header", "v1 unchanged"],
)
def test_routes(endpoint, url, headers):
    assert endpoint.predictions_url() == url and endpoint.headers() == headers


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (QueryConfig(Endpoint(protocol="v2", route="ambassador")), "not a v2 route"),
        (QueryConfig(Endpoint(protocol="v2"), payload="tensor"), "not a v2 payload"),
        (QueryConfig(Endpoint(), payload="images"), "not a v1 payload"),
        (QueryConfig(Endpoint(protocol="v3")), "unknown protocol"),
    ],
    ids=["v1 route", "v1 payload", "v2 payload on v1", "no such protocol"],
)
def test_mismatched_options_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate()


# -- against the real V2 server -------------------------------------------------------------


@pytest.fixture(scope="module")
def v2(trained_run, tmp_path_factory):
    from mnistkit.local.mlserver import start_mlserver

    server = start_mlserver(trained_run.artifact, python=mlserver_python(), workdir=tmp_path_factory.mktemp("v2c"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(v2, tmp_path_factory):
    from support.kserve_gateway import V2Gateway

    gw = V2Gateway(tmp_path_factory.mktemp("nginx-v2"), v2.http_port, name="mnist", namespace="default")
    yield gw
    gw.stop()


def _query(args):
    return CliRunner(mix_stderr=False).invoke(query_main, ["--protocol", "v2", *args])


ROUTE_ARGS = {
    "direct": lambda v2, gw: ["--endpoint", f"127.0.0.1:{v2.http_port}", "--route", "direct"],
    "kserve by host": lambda v2, gw: ["--endpoint", gw.endpoint, "--route", "kserve", "--namespace", "default"],
    "kserve standard host": lambda v2, gw: [
        "--url",
        f"http://{gw.endpoint}/v2/models/mnist/infer",
        "--host-header",
        "mnist-default.example.com",
    ],
    "seldon prefix": lambda v2, gw: ["--endpoint", gw.endpoint, "--route", "seldon", "--namespace", "default"],
}


@pytest.mark.server
@pytest.mark.parametrize("payload", ["pixels", "images"])
@pytest.mark.parametrize("route", list(ROUTE_ARGS))
def test_query_prints_the_v1_table_over_every_route(v2, gateway, route, payload):
    files = sorted(IMAGES.glob("*.png"))
    r = _query([*ROUTE_ARGS[route](v2, gateway), "--payload", payload, *map(str, files)])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["image", "digit", "probability", "runner-up"] and len(lines) == 1 + len(files)
    wrong = [ln for ln in lines[1:] if int(ln.split()[1]) != LABELS[ln.split()[0].rsplit("/", 1)[-1]]]
    assert len(wrong) <= 1, wrong  # a 2-epoch model on 5,000 images may miss one of eleven


@pytest.mark.server
def test_a_host_kserve_does_not_know_gets_the_ingress_404(gateway):
    r = _query(
        [
            "--endpoint",
            gateway.endpoint,
            "--route",
            "kserve",
            "--namespace",
            "other",
            "--retries",
            "0",
            str(IMAGES / "87.png"),
        ]
    )
    assert r.exit_code == 1 and r.stderr.strip().split("; ")[0].endswith("answered 404: no route for this host")


@pytest.mark.server
def test_a_model_name_the_server_does_not_have_points_at_model(v2):
    r = _query(
        ["--endpoint", f"127.0.0.1:{v2.http_port}", "--route", "direct", "--model", "nope", str(IMAGES / "87.png")]
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "answered 404" in lines[0], r.stderr
    assert lines[0].endswith("; is --model the served model's name, and --route right?")


@pytest.mark.server
def test_a_server_400_is_one_line_with_the_v2_error(v2, tmp_path):
    np.save(tmp_path / "many.npy", np.zeros((300, 28, 28), dtype=np.uint8))
    args = ["--endpoint", f"127.0.0.1:{v2.http_port}", "--route", "direct", "--max-batch", "300"]  # over the limit
    r = _query([*args, str(tmp_path / "many.npy")])
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        f"Error: http://127.0.0.1:{v2.http_port}/v2/models/mnist/infer answered 400: "
        "input 'pixels': shape [300, 784] holds 235200 values, over the limit of 200704"
    )


TRITON = """
import json, sys
import numpy as np
import tritonclient.http as tc

url, host, path = sys.argv[1:4]
headers = {"Host": host}
x = np.load(path)
client = tc.InferenceServerClient(url=url)
pixels = tc.InferInput("pixels", [len(x), 784], "INT32")
pixels.set_data_from_numpy(x.reshape(-1, 784).astype(np.int32), binary_data=False)
outputs = [tc.InferRequestedOutput("probabilities"), tc.InferRequestedOutput("digits")]
r = client.infer("mnist", inputs=[pixels], outputs=outputs, headers=headers)
meta = client.get_model_metadata("mnist", headers=headers)
print(json.dumps({
    "live": client.is_server_live(headers=headers),
    "ready": client.is_model_ready("mnist", headers=headers),
    "inputs": [i["name"] for i in meta["inputs"]],
    "probabilities": r.as_numpy("probabilities").tolist(),
    "digits": r.as_numpy("digits").tolist(),
}))
"""


@pytest.mark.server
@pytest.mark.parametrize("through", ["direct", "kserve ingress"])
def test_same_answers_as_tritonclient(v2, gateway, mnist, tmp_path, through):
    """tritonclient[http] (a V2 client mnistkit did not write, installed with MLServer) agrees."""
    x = mnist.test_images[:5].numpy()
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "triton.py").write_text(TRITON)
    url, host = (f"127.0.0.1:{v2.http_port}", "localhost") if through == "direct" else (gateway.endpoint, gateway.host)
    proc = subprocess.run(
        [mlserver_python(), str(tmp_path / "triton.py"), url, host, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    assert theirs["live"] and theirs["ready"] and theirs["inputs"] == ["pixels", "images"]
    endpoint = Endpoint(
        url.split("/")[0], "mnist", "default", "direct" if through == "direct" else "kserve", protocol="v2"
    )
    ours = predict([Input(f"x{i}", d) for i, d in enumerate(x)], QueryConfig(endpoint))
    assert np.allclose(theirs["probabilities"], [p.probabilities for p in ours], atol=1e-6)
    assert theirs["digits"] == [p.digit for p in ours]
