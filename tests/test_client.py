"""mnistkit.client and mnistkit-query against the real microservice, through real nginx."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mnistkit.cli.query import main as query_main
from mnistkit.client import Endpoint, QueryConfig, build_payload, load_inputs, predict
from mnistkit.local.microservice import start_microservice
from mnistkit.pixels import encode_png
from support import REPO, free_port

IMAGES = REPO / "examples" / "images"
LABELS = json.loads((IMAGES / "labels.json").read_text())

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    service = start_microservice(env={"MNISTKIT_MODEL": str(trained_run.artifact)}, cwd=tmp_path_factory.mktemp("ms"))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    from support.gateway import Gateway

    gw = Gateway(tmp_path_factory.mktemp("nginx"), server.http_port)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def digits(mnist, tmp_path_factory):
    """Twenty more real test digits written as PNG files, with their labels."""
    folder = tmp_path_factory.mktemp("digits")
    labels = {}
    for i in range(100, 120):
        path = folder / f"t{i}.png"
        path.write_bytes(encode_png(mnist.test_images[i].numpy()))
        labels[str(path)] = int(mnist.test_labels[i])
    return labels


def direct(server):
    return Endpoint(host=f"127.0.0.1:{server.http_port}", route="direct")


def test_the_2018_payload_shape():
    inputs = load_inputs([IMAGES / "87.png"])
    payload = build_payload(inputs, "tensor")
    assert payload["data"]["names"] == [] and payload["data"]["tensor"]["shape"] == [784]
    values = payload["data"]["tensor"]["values"]
    assert len(values) == 784 and all(isinstance(v, int) and 0 <= v <= 255 for v in values)


@pytest.mark.parametrize("payload", ["tensor", "ndarray", "binData"])
def test_example_digits_come_back_right(server, payload):
    files = sorted(IMAGES.glob("*.png"))
    preds = predict(load_inputs(files), QueryConfig(direct(server), payload=payload))
    got = {p.name: p.digit for p in preds}
    wrong = {n: (d, LABELS[n.split("/")[-1]]) for n, d in got.items() if d != LABELS[n.split("/")[-1]]}
    assert len(wrong) <= 1, wrong  # a 2-epoch model on 5,000 images may miss one of eleven
    assert all(0 <= p.probability <= 1 and p.runner_up != p.digit for p in preds)


def test_generated_digits_mostly_right_and_batched_equals_single(server, digits):
    inputs = load_inputs(list(digits))
    batched = predict(inputs, QueryConfig(direct(server)))
    single = predict(inputs, QueryConfig(direct(server), batch=False))
    assert [p.digit for p in batched] == [p.digit for p in single]
    assert np.allclose([p.probabilities for p in batched], [p.probabilities for p in single], atol=1e-6)
    right = sum(p.digit == digits[p.name] for p in batched)
    assert right >= 17  # the model scores ~93% on the test set


@pytest.mark.parametrize("route", ["ambassador", "ambassador-v0.1"])
def test_both_gateway_routes_through_nginx(gateway, route, digits):
    endpoint = Endpoint(host=gateway.endpoint, route=route, deployment="mnist", namespace="seldon")
    preds = predict(load_inputs(list(digits)[:5]), QueryConfig(endpoint))
    assert len(preds) == 5
    result = CliRunner(mix_stderr=False).invoke(
        query_main, ["--endpoint", gateway.endpoint, "--route", route, str(IMAGES / "mnist-test-0000.png")]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[1] == "7"


def test_same_probabilities_as_seldons_own_client(gateway, digits):
    from seldon_core.seldon_client import SeldonClient

    inputs = load_inputs(list(digits)[:3])
    ours = predict(inputs, QueryConfig(Endpoint(host=gateway.endpoint)))
    sc = SeldonClient(
        gateway="ambassador",
        transport="rest",
        gateway_endpoint=gateway.endpoint,
        namespace="seldon",
        deployment_name="mnist",
    )
    x = np.stack([i.pixels.reshape(784) for i in inputs]).astype(np.float64)
    theirs = sc.predict(data=x, payload_type="tensor")
    assert theirs.success, theirs.msg
    t = theirs.response["data"]["tensor"]
    assert np.allclose(np.array(t["values"]).reshape(t["shape"]), [p.probabilities for p in ours], atol=1e-6)


def test_cli_json_output(server):
    result = CliRunner(mix_stderr=False).invoke(
        query_main,
        [
            "--endpoint",
            f"127.0.0.1:{server.http_port}",
            "--route",
            "direct",
            "--json",
            str(IMAGES / "mnist-test-0001.png"),
            str(IMAGES / "mnist-test-0002.png"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["digit"] for r in rows] == [2, 1]
    assert rows[0]["response"]["data"]["names"] == [str(d) for d in range(10)]


def test_npy_input(server, mnist, tmp_path):
    np.save(tmp_path / "three.npy", mnist.test_images[:3].numpy())
    preds = predict(load_inputs([tmp_path / "three.npy"]), QueryConfig(direct(server)))
    assert [p.name.endswith(f"[{i}]") for i, p in enumerate(preds)] == [True] * 3


def _run(args):
    return CliRunner(mix_stderr=False).invoke(query_main, args)


BAD_INPUTS = {  # case -> (arguments after the endpoint, given a tmp folder; what the one line says)
    "missing file": (lambda tmp: [str(tmp / "nope.png")], "no such file"),
    "not an image": (lambda tmp: [str(tmp / "notes.txt")], "not an image Pillow can read"),
    "a folder": (lambda tmp: [str(tmp)], "is a folder; give the image files in it (e.g. "),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_each_give_one_clear_line(case, server, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    args, message = BAD_INPUTS[case]
    r = _run(["--endpoint", f"127.0.0.1:{server.http_port}", "--route", "direct", "--retries", "0", *args(tmp_path)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_an_unreachable_endpoint_is_one_clear_line():
    r = _run(["--endpoint", f"127.0.0.1:{free_port()}", "--retries", "1", "--timeout", "2", str(IMAGES / "87.png")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "cannot reach" in lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--url", "ftp://127.0.0.1:9000/x"], "--url 'ftp://127.0.0.1:9000/x' is not an http(s) URL with a host"),
        (["--url", "127.0.0.1:9000/api/v1.0/predictions"], "is not an http(s) URL with a host"),
        (["--endpoint", "127.0.0.1:port"], "--endpoint 'http://127.0.0.1:port' has a port that is not a number"),
    ],
)
def test_a_url_that_cannot_work_is_refused_at_once(flags, message):
    """Refused before any request: before, an ftp:// URL was retried for 44 s and a URL without
    a scheme four times, each failure only then reported."""
    import time

    started = time.monotonic()
    r = _run([*flags, str(IMAGES / "87.png")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and message in lines[0], r.stderr
    assert time.monotonic() - started < 5


def test_an_image_of_another_size_is_read_with_a_warning(server, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (56, 40), color=0).save(big)
    r = _run(["--endpoint", f"127.0.0.1:{server.http_port}", "--route", "direct", str(big)])
    assert r.exit_code == 0 and "resized to 28x28" in r.stderr


def test_server_400_shows_seldons_info(server, tmp_path):
    too_many = tmp_path / "x.npy"
    np.save(too_many, np.zeros((300, 28, 28), dtype=np.uint8))
    # the client splits at --max-batch (256 by default); told 300, it meets the server's limit
    args = ["--endpoint", f"127.0.0.1:{server.http_port}", "--route", "direct", "--max-batch", "300"]
    r = _run([*args, str(too_many)])
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        f"Error: http://127.0.0.1:{server.http_port}/api/v1.0/predictions answered 400: "
        "batch of 300 images is over the limit of 256; split the request"
    )


def test_the_client_applies_the_servers_pixel_rules_before_sending(tmp_path):
    too_bright = tmp_path / "x.npy"
    np.save(too_bright, np.full((28, 28), 300.0))
    r = _run(["--endpoint", f"127.0.0.1:{free_port()}", "--route", "direct", str(too_bright)])  # nothing listens there
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: pixels must lie in 0..255 (raw intensities), got values from 300 to 300"


def test_client_does_not_import_torch():
    import subprocess

    code = "import sys, mnistkit.client, mnistkit.cli.query; assert 'torch' not in sys.modules and 'docker' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_batch_reports_each_failure_and_goes_on(server, tmp_path):
    too_bright = tmp_path / "bright.npy"
    np.save(too_bright, np.full((28, 28), 300.0))
    r = _run(
        [
            "--endpoint",
            f"127.0.0.1:{server.http_port}",
            "--route",
            "direct",
            "--no-batch",
            str(IMAGES / "mnist-test-0000.png"),
            str(too_bright),
            str(IMAGES / "mnist-test-0001.png"),
        ]
    )
    assert r.exit_code == 1
    assert [line.split()[1] for line in r.stdout.splitlines()[1:]] == ["7", "2"]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"Error: {too_bright}: ") and "0..255" in errors[0]


def test_more_images_than_one_request_may_carry_go_in_several(server, mnist, tmp_path):
    """300 digits against a server that takes at most 256 per request (MNISTKIT_MAX_BATCH's
    default): the CLI sends them in requests of at most --max-batch, and every digit comes back."""
    np.save(tmp_path / "many.npy", mnist.test_images[:300].numpy())
    endpoint = ["--route", "direct", "--endpoint", f"127.0.0.1:{server.http_port}", "--json"]
    r = _run([*endpoint, str(tmp_path / "many.npy")])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["image"] for row in rows] == [f"{tmp_path / 'many.npy'}[{i}]" for i in range(300)]
    right = sum(row["digit"] == int(mnist.test_labels[i]) for i, row in enumerate(rows))
    assert right >= 270
    answers = [json.dumps(row["response"], sort_keys=True) for row in rows]
    assert len(set(answers[:256])) == 1 and len(set(answers[256:])) == 1 and answers[0] != answers[-1]  # 2 requests
    r = _run([*endpoint, "--max-batch", "0", str(tmp_path / "many.npy")])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: --max-batch must be at least 1 (got 0)"
