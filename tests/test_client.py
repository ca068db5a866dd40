"""mnistkit.client and mnistkit-query against the real microservice, through real nginx."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time

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
    "an empty .npy": (lambda tmp: [str(tmp / "empty.npy")], "empty.npy is not a .npy array (it is empty)"),
    "text named .npy": (lambda tmp: [str(tmp / "text.npy")], "text.npy is not a .npy array (it does not start as one"),
    "a .npy that claims 8 TB": (lambda tmp: [str(tmp / "huge.npy")], "huge.npy is not a readable .npy array (shorter"),
    "a complex .npy": (
        lambda tmp: [str(tmp / "complex.npy")],
        "pixels must be real numbers 0..255, got complex numbers",
    ),
}


def _npy_claiming(path, shape):
    """A .npy file whose header claims ``shape`` of float64 but holds 100 bytes."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (117 - len(header)) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 100)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_each_give_one_clear_line(case, server, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.npy").write_bytes(b"")  # was a blank line and "Aborted!"
    (tmp_path / "text.npy").write_text("1 2 3")
    _npy_claiming(tmp_path / "huge.npy", (10**12,))  # was a MemoryError traceback
    np.save(tmp_path / "complex.npy", np.full((1, 784), 100 + 50j))  # was made real, with numpy's ComplexWarning
    args, message = BAD_INPUTS[case]
    r = _run(["--endpoint", f"127.0.0.1:{server.http_port}", "--route", "direct", "--retries", "0", *args(tmp_path)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_an_unreachable_endpoint_is_one_clear_line():
    r = _run(["--endpoint", f"127.0.0.1:{free_port()}", "--retries", "1", "--timeout", "2", str(IMAGES / "87.png")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "cannot reach" in lines[0]


URLS_THAT_CANNOT_WORK = [
    (["--url", "ftp://127.0.0.1:9000/x"], "--url 'ftp://127.0.0.1:9000/x' is not an http(s) URL with a host"),
    (["--url", "127.0.0.1:9000/api/v1.0/predictions"], "is not an http(s) URL with a host"),
    (["--endpoint", "127.0.0.1:port"], "--endpoint '127.0.0.1:port' has a port that is not a number"),
    (
        ["--endpoint", "localhost:99999"],
        "--endpoint 'localhost:99999' has port 99999, out of range: a port is 1..65535",
    ),
    (["--endpoint", "localhost:0"], "has port 0, out of range: a port is 1..65535"),
    (["--url", ""], "--url '' is not an http(s) URL with a host"),
    (["--endpoint", ""], "--endpoint '' is not an http(s) URL with a host"),
    (["--deployment", ""], "--deployment '' cannot be part of a URL path"),
    (["--namespace", "a b"], "--namespace 'a b' cannot be part of a URL path"),
    (["--protocol", "v2", "--model", "m/../x"], "--model 'm/../x' cannot be part of a URL path"),
    (["--url", "http://127.0.0.1:1/caf\u00e9"], "holds a space, a control character or a non-ASCII character"),
    (["--url", "http://a..b/x"], "has a host name with an empty or over-long label"),
]


@pytest.mark.parametrize(
    ("flags", "message"), URLS_THAT_CANNOT_WORK, ids=[" ".join(map(repr, f)) for f, _ in URLS_THAT_CANNOT_WORK]
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


# -- servers that misbehave in one exact way: real TCP servers on loopback -----------------------


def _read_request(conn):
    """Read one HTTP request (headers and a Content-Length body); return the request line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")) if k.lower() == b"content-length"), 0
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n")[0]


@contextlib.contextmanager
def _server(reply):
    """A real server on a free loopback port that reads each request, then runs ``reply(conn, request_line)``.
    Yields its base URL and the request lines it got."""
    sock = socket.create_server(("127.0.0.1", 0))
    got = []

    def handle(conn):
        with conn:
            try:
                got.append(_read_request(conn))
                reply(conn, got[-1])
            except OSError:  # the client hung up: what a bounded client does
                pass

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", got
    finally:
        sock.close()


def _http(status, body, *headers):
    def reply(conn, request):
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close", *headers]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    return reply


def _redirect_then(answer):
    """302 to /moved for the POST; a prediction there for the GET a client following it would send."""

    def reply(conn, request):
        moved = _http(302, b"", "Location: /moved")
        (answer if request.startswith(b"GET /moved") else moved)(conn, request)

    return reply


def _probabilities(protocol, values):
    """A 200 answer of one row of probabilities, as the protocol's server would write it."""
    if protocol == "v2":
        answer = {"outputs": [{"name": "probabilities", "shape": [1, 10], "datatype": "FP32", "data": values}]}
    else:
        answer = {"data": {"names": [str(d) for d in range(10)], "tensor": {"shape": [1, 10], "values": values}}}
    return _http(200, json.dumps(answer).encode())


def _error(protocol, status, message):
    answer = {"error": message} if protocol == "v2" else {"status": {"code": status, "info": message}}
    return _http(status, json.dumps(answer).encode())


def _query(protocol, url, *args):
    path = "/v2/models/mnist/infer" if protocol == "v2" else "/api/v1.0/predictions"
    return _run(["--protocol", protocol, "--url", url + path, "--retries", "0", *args, str(IMAGES / "87.png")])


def _one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (r.exit_code, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    return lines[0]


PROTOCOLS = pytest.mark.parametrize("protocol", ["v1", "v2"])
NINES = [0.9, 0.1] + [0.0] * 8
HOSTILE = {  # case -> (the server's reply for a protocol, what the one line says)
    "200,000 [ with 200": (
        lambda p: _http(200, b"[" * 200_000),
        "answered 200 with something that is not JSON the client can read (nested too deeply)",
    ),
    "200,000 [ with 500": (
        lambda p: _http(500, b"[" * 200_000),
        "answered 500: an answer that is not JSON the client can read",
    ),
    "NaN probabilities": (
        lambda p: _probabilities(p, [float("nan")] * 10),
        "answered a probability of nan for digit 0 of ",
    ),
    "a probability of -7": (
        lambda p: _probabilities(p, [*NINES[:9], -7]),
        "answered a probability of -7 for digit 9 of ",
    ),
    "an infinite probability": (
        lambda p: _probabilities(p, [*NINES[:3], float("inf"), *NINES[4:]]),
        "a probability of inf for digit 3",
    ),
    "a 302 redirect": (
        lambda p: _redirect_then(_probabilities(p, NINES)),
        "answered 302, a redirect to /moved; the client does not follow redirects",
    ),
    "a message over lines": (
        lambda p: _error(p, 500, "first line\nsecond\r\nthird\x1b[31m"),
        "answered 500: first line second third [31m",
    ),
}


@PROTOCOLS
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_answer_is_one_line_naming_what_is_wrong(protocol, case):
    """Each was a traceback (RecursionError), a nonsense prediction printed with exit 0, the
    redirect's GET answer printed as the prediction, or a message split over lines."""
    reply, message = HOSTILE[case]
    with _server(reply(protocol)) as (url, got):
        line = _one_error_line(_query(protocol, url))
    assert message in line, line
    assert len(got) == 1  # one request: a redirect is not followed, a bad answer is not retried


@PROTOCOLS
def test_probabilities_a_rounding_error_outside_0_or_1_are_read(protocol):
    with _server(_probabilities(protocol, [1.0000001, -1e-7] + [0.0] * 8)) as (url, _):
        r = _query(protocol, url)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[1:3] == ["0", "1.0000"]


def _trickle(head_first):
    """Headers at once and then a body a byte every 0.2 s, or the headers themselves a byte at a
    time; for 20 s at most, so a client without a deadline is seen to wait."""

    def reply(conn, request):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        if head_first:
            conn.sendall(head)
        for byte in (b"" if head_first else head) + b" " * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    return reply


@pytest.mark.parametrize("head_first", [True, False], ids=["body trickles", "headers trickle"])
def test_an_answer_trickling_in_is_cut_off_at_the_timeout(head_first):
    """--timeout bounds the whole answer, not each read: before, a byte a second kept
    `--timeout 2 --retries 0` waiting 61 s."""
    with _server(_trickle(head_first)) as (url, _):
        started = time.monotonic()
        line = _one_error_line(_query("v1", url, "--timeout", "1"))
        took = time.monotonic() - started
    assert "no whole answer within the --timeout of 1 s (after 1 tries)" in line, line
    assert took < 3, took


def _endless(sent, with_length):
    """A body of 64 MiB (or one that claims 300 MB): what a client reads before it hangs up is counted."""

    def reply(conn, request):
        length = f"Content-Length: {300 * 10**6}\r\n" if with_length else ""
        conn.sendall(f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode())
        chunk = b"0," * 2**19  # 1 MiB
        for _ in range(64):
            conn.sendall(chunk)
            sent.append(len(chunk))

    return reply


@PROTOCOLS
@pytest.mark.parametrize("with_length", [False, True], ids=["no length", "a Content-Length of 300 MB"])
def test_an_answer_over_the_size_limit_is_refused_without_reading_it_whole(protocol, with_length):
    """Before, a 300 MB answer was read whole (658 MB of client memory)."""
    sent = []
    with _server(_endless(sent, with_length)) as (url, _):
        line = _one_error_line(_query(protocol, url))
    assert "answered more than 8 MiB, the client's limit for an answer" in line, line
    assert sum(sent) < 40 * 2**20  # the client hung up long before the end (socket buffers hold a few MiB)


@PROTOCOLS
@pytest.mark.parametrize(
    "value",
    ["evil\r\nX: 1", "tab\there", "caf\u00e9\u20ac", ""],
    ids=["CRLF", "a tab", "not ASCII", "empty"],
)
def test_a_host_header_with_control_characters_is_refused_before_sending(protocol, value):
    with _server(_http(200, b"{}")) as (url, got):
        line = _one_error_line(_query(protocol, url, "--host-header", value))
    assert line == (
        f"Error: --host-header {value!r} is not a host name: give printable ASCII without spaces or control "
        "characters, e.g. mnist.default.example.com"
    )
    assert got == []  # nothing was sent


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("nan", "got nan"),
        ("inf", "got inf"),
        ("-1", "got -1.0"),
        ("0", "got 0.0"),
        ("86401", "got 86401.0"),
    ],
)
def test_a_timeout_that_is_not_a_sane_number_of_seconds_is_refused(timeout, message):
    """nan was a ValueError traceback, inf an OverflowError one."""
    line = _one_error_line(
        _run(["--url", f"http://127.0.0.1:{free_port()}/x", "--timeout", timeout, str(IMAGES / "87.png")])
    )
    assert line == f"Error: --timeout must be a number of seconds above 0 and at most 86400 (a day); {message}"


def test_too_many_retries_are_refused():
    line = _one_error_line(
        _run(["--url", f"http://127.0.0.1:{free_port()}/x", "--retries", "1000", str(IMAGES / "87.png")])
    )
    assert line == "Error: --retries must be 0..100 (got 1000)"


def test_the_proxy_the_environment_names_is_used_and_no_proxy_is_honoured(monkeypatch):
    """As urllib's opener did before the client moved to http.client: plain HTTP goes to the
    proxy with the whole URL; a host in no_proxy is reached directly."""
    with _server(_probabilities("v1", [0.0] * 9 + [1.0])) as (proxy, got):
        for key in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("http_proxy", proxy)
        r = _run(["--url", "http://mnist.invalid:9000/api/v1.0/predictions", "--retries", "0", str(IMAGES / "87.png")])
        assert r.exit_code == 0, r.stderr
        assert got[-1].startswith(b"POST http://mnist.invalid:9000/api/v1.0/predictions ")
        monkeypatch.setenv("no_proxy", "mnist.invalid")
        r = _run(["--url", "http://mnist.invalid:9000/api/v1.0/predictions", "--retries", "0", str(IMAGES / "87.png")])
        assert r.exit_code == 1 and "cannot reach" in r.stderr and len(got) == 1  # direct: no such host
