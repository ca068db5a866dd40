"""The V2 runtime in the real MLServer 1.7 (its own venv), started by mnistkit.launch_v2 with two
processes on one port, as the V2 image runs it: answers equal the in-process model's, the input
rules, hostile payloads (4xx JSON, never 5xx), metadata, health, docs, metrics, supervision."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from mnistkit.local._proc import wait_until
from mnistkit.local.mlserver import start_mlserver
from support.v2 import GRPC, HOSTILE, ONE, images_input, mlserver_python, pixels_input, png, request

pytestmark = pytest.mark.server

INFER = "/v2/models/mnist/infer"


@pytest.fixture(scope="module")
def v2(trained_run, tmp_path_factory):
    server = start_mlserver(
        trained_run.artifact, python=mlserver_python(), workdir=tmp_path_factory.mktemp("v2"), processes=2
    )
    server.started = time.monotonic()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predictor(trained_run):
    from mnistkit.runtime import load_predictor

    return load_predictor(trained_run.artifact)


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images[:4].numpy().astype(np.uint8)  # (4, 28, 28) real test digits


VALID = {
    "int32 [n,784] flat": lambda d: pixels_input(d.reshape(-1).tolist(), [4, 784]),
    "fp32 [n,28,28] flat": lambda d: pixels_input(d.astype(float).reshape(-1).tolist(), [4, 28, 28], "FP32"),
    "uint8 [n,1,28,28] flat": lambda d: pixels_input(d.reshape(-1).tolist(), [4, 1, 28, 28], "UINT8"),
    "fp64 [n,28,28] nested": lambda d: pixels_input(d.astype(float).tolist(), [4, 28, 28], "FP64"),
    "int64 [784] one image": lambda d: pixels_input(d[0].reshape(-1).tolist(), [784], "INT64"),
    "bytes png [n]": lambda d: images_input([png(x) for x in d]),
    "bytes png [n,1]": lambda d: images_input([png(x) for x in d], [4, 1]),
}


@pytest.mark.parametrize("make", VALID.values(), ids=VALID.keys())
def test_answers_equal_the_in_process_model(v2, predictor, digits, make):
    status, body, headers = request(v2.url + INFER, body=make(digits))
    assert status == 200, body
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    probs = np.asarray(out["probabilities"]["data"], dtype=np.float32).reshape(out["probabilities"]["shape"])
    n = len(probs)
    want = predictor.predict(digits[:n].astype(np.float32))
    assert out["probabilities"]["datatype"] == "FP32" and out["digits"]["datatype"] == "INT64"
    assert np.abs(probs - want).max() < 1e-5
    assert out["digits"]["data"] == want.argmax(1).tolist() and out["digits"]["shape"] == [n]


def test_jpeg_and_a_larger_image_are_read_like_pngs(v2, predictor, digits):
    big = np.asarray(Image.fromarray(digits[0]).resize((56, 56)))
    status, body, _ = request(v2.url + INFER, body=images_input([png(digits[0], "JPEG"), png(big)]))
    assert status == 200, body
    got = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert got["digits"][0] == int(predictor.predict(digits[:1].astype(np.float32)).argmax())


@pytest.mark.parametrize(
    ("outputs", "names"),
    [
        ([{"name": "digits"}], ["digits"]),
        ([{"name": "probabilities"}], ["probabilities"]),
        (None, ["probabilities", "digits"]),
    ],
    ids=["digits only", "probabilities only", "both by default"],
)
def test_requested_outputs_are_the_ones_returned(v2, digits, outputs, names):
    payload = pixels_input(digits[0].reshape(-1).tolist(), [1, 784])
    if outputs:
        payload["outputs"] = outputs
    status, body, _ = request(v2.url + INFER, body=payload)
    assert status == 200 and [o["name"] for o in json.loads(body)["outputs"]] == names


@pytest.mark.parametrize(("body", "status", "says"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_payloads_get_a_4xx_v2_error(v2, body, status, says):
    got, raw, headers = request(v2.url + INFER, body=body)
    assert got == status, raw[:300]
    error = json.loads(raw)["error"]
    assert says in error and "Traceback" not in error and headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "method", "headers", "body", "status"),
    [
        ("/v2/nothing", "GET", {}, None, 404),
        (INFER, "GET", {}, None, 405),
        ("/v2/models/nope/infer", "POST", {}, pixels_input(ONE, [1, 784]), 404),
        (INFER, "POST", {"Content-Type": "text/plain"}, b"pixels please", 400),
        (INFER, "POST", {"Content-Encoding": "br"}, b"{}", 415),
        (INFER, "POST", {"Content-Encoding": "gzip"}, gzip.compress(b" " * (8 * 1024 * 1024)), 413),
    ],
    ids=["unknown route", "GET on infer", "unknown model", "wrong content type", "brotli", "gzip bomb"],
)
def test_routing_and_encoding_errors_are_v2_errors(v2, path, method, headers, body, status):
    got, raw, _ = request(v2.url + path, method, body, headers)
    assert got == status, raw[:300]
    assert json.loads(raw)["error"]


def test_a_chunked_body_over_the_limit_gets_413(v2):
    conn = http.client.HTTPConnection("127.0.0.1", v2.http_port, timeout=60)
    chunks = (b"x" * 65536 for _ in range(100))  # 6.5 MB, no Content-Length
    conn.request("POST", INFER, body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "over the limit" in json.loads(r.read())["error"]
    conn.close()


def test_metadata_declares_the_tensors(v2, trained_run):
    meta = json.loads(urllib.request.urlopen(v2.url + "/v2/models/mnist").read())
    assert meta["name"] == "mnist" and meta["versions"] == [trained_run.artifact_sha256[:12]]
    assert meta["platform"] == "pytorch"  # the tiny run has no model.onnx: torch serves it
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("pixels", "FP32"), ("images", "BYTES")]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("digits", "INT64", [-1]),
    ]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v2/health/live", ""),
        ("/v2/health/ready", ""),
        ("/v2/models/mnist/ready", ""),
        ("/v2/docs", "text/html"),
        ("/v2/docs/dataplane.json", "application/json"),
        ("/v2", "application/json"),
    ],
)
def test_health_and_docs_answer(v2, path, kind):
    status, _, headers = request(v2.url + path, "GET")
    assert status == 200 and headers.get("content-type", "").startswith(kind)


@pytest.mark.parametrize("page", ["/v2/docs", "/v2/models/mnist/docs"])
def test_docs_pages_load_swagger_ui_from_the_server_not_a_cdn(v2, page):
    """Offline (air-gapped clusters, this machine) a page that loads Swagger UI from a CDN is blank."""
    import re

    status, body, _ = request(v2.url + page, "GET")
    html = body.decode()
    assert status == 200 and "SwaggerUIBundle(" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 3 and all(a.startswith("/v2/docs/swagger-ui/") for a in assets), assets
    assert "//" not in "".join(assets) and "cdn" not in html
    kinds = set()
    for asset in assets:
        status, data, headers = request(v2.url + asset, "GET")
        assert status == 200 and len(data) > 500, asset
        kinds.add(headers["content-type"].split(";")[0])
    assert kinds == {"text/javascript", "text/css", "image/png"}
    assert request(v2.url + "/v2/docs/swagger-ui/../../../etc/passwd", "GET")[0] == 404


@pytest.mark.parametrize("server_settings", [None, {"http_port": 9999, "debug": False}])
def test_the_launchers_settings_loader_matches_mlservers(trained_run, tmp_path, server_settings):
    """mnistkit.launch_v2 reads the folder as ``mlserver.cli.serve.load_settings`` does, without
    importing ``mlserver.cli`` (tritonclient, aiohttp, gevent: ~0.1 s and ~15 MB per process).
    This catches drift when MLServer changes."""
    import subprocess

    from mnistkit.local.mlserver import write_model_folder

    folder = write_model_folder(trained_run.artifact, tmp_path / "m", max_batch=256)
    if server_settings is not None:
        (folder / "settings.json").write_text(json.dumps(server_settings))
    code = (
        "import asyncio, sys\n"
        "from mnistkit.launch_v2 import _load_settings, _preload\n"
        "_preload()\n"
        "ours = asyncio.run(_load_settings(sys.argv[1]))\n"
        "print('mlserver.cli' in sys.modules)\n"
        "from mlserver.cli.serve import load_settings\n"
        "theirs = asyncio.run(load_settings(sys.argv[1]))\n"
        "print(ours[0] == theirs[0], ours[1] == theirs[1], len(ours[1]), ours[0].http_port)\n"
    )
    out = subprocess.run([mlserver_python(), "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    port = str((server_settings or {}).get("http_port", 8080))
    assert out.stdout.split() == ["False", "True", "True", "1", port]


def _metric(v2, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{v2.metrics_port}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_mnistkit_counters_sum_over_both_processes(v2, digits):
    before, refused = _metric(v2, "mnistkit_predictions_total"), _metric(v2, "mnistkit_refused_total")
    for _ in range(10):  # new connections: the kernel spreads them over both processes
        assert request(v2.url + INFER, body=pixels_input(digits.reshape(-1).tolist(), [4, 784]))[0] == 200
    assert request(v2.url + INFER, body=pixels_input([999] * 784, [1, 784]))[0] == 400
    assert _metric(v2, "mnistkit_predictions_total") - before == 40
    assert _metric(v2, "mnistkit_refused_total") - refused == 1
    assert _metric(v2, "model_infer_request_success_total") >= 10


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_a_killed_server_process_is_replaced_and_the_other_keeps_serving(v2, digits):
    payload = pixels_input(digits[0].reshape(-1).tolist(), [1, 784])
    from mnistkit.supervisor import MIN_UPTIME

    time.sleep(max(0.0, v2.started + MIN_UPTIME + 1 - time.monotonic()))  # past start-up: a crash, not a failed start
    victims = _children(v2.proc.pid)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    # Each process listens on its own SO_REUSEPORT socket, which dies with it: a connection that
    # was still queued on it is reset, as a client of a crashed process sees it. Every new
    # connection goes to the other process from then on, while the first is being replaced.
    wait_until(lambda: not os.path.exists(f"/proc/{victims[0]}/fd"), 5, interval=0.01)
    assert all(request(v2.url + INFER, body=payload)[0] == 200 for _ in range(20))
    assert wait_until(lambda: len(set(_children(v2.proc.pid)) - set(victims)) == 1, 30)
    time.sleep(3)
    assert all(request(v2.url + INFER, body=payload)[0] == 200 for _ in range(10))


def test_sigterm_stops_every_process_with_exit_code_0(trained_run, tmp_path):
    server = start_mlserver(trained_run.artifact, python=mlserver_python(), workdir=tmp_path, processes=2)
    children = _children(server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert not any(os.path.exists(f"/proc/{c}") and "zombie" not in open(f"/proc/{c}/status").read() for c in children)


def test_a_tampered_artifact_never_serves(trained_run, tmp_path):
    """The folder is written for the good artifact, then its weights change: the server refuses."""
    import shutil
    import subprocess

    from mnistkit.local.mlserver import write_model_folder

    model = tmp_path / "model"
    shutil.copytree(trained_run.artifact, model)
    folder = write_model_folder(model, tmp_path / "v2-model", max_batch=8)
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    env = {**os.environ, "MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": "0", "MLSERVER_GRPC_PORT": "0"}
    env.update(MLSERVER_METRICS_PORT="0", MNISTKIT_PROCESSES="1")
    proc = subprocess.run(
        [mlserver_python(), "-m", "mnistkit.launch_v2", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "does not match its sha256" in proc.stderr and "Traceback" not in proc.stderr


def _launch(folder, port, **env):
    import subprocess

    env = {
        **os.environ,
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": "0",
        "MLSERVER_METRICS_PORT": "0",
        **env,
    }
    cmd = [mlserver_python(), "-m", "mnistkit.launch_v2", str(folder)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_port_something_listens_on_is_refused_not_shared(v2, trained_run, tmp_path):
    """The servers share their port with SO_REUSEPORT; a second launcher must not join them
    (nor a server some other program runs there with SO_REUSEPORT): one line, exit 2."""
    import socket

    from mnistkit.local.mlserver import write_model_folder

    folder = write_model_folder(trained_run.artifact, tmp_path / "m", max_batch=8)
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        for port in (v2.http_port, other.getsockname()[1]):
            proc = _launch(folder, port)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    finally:
        other.close()
    # another HTTP port, but the first's gRPC or metrics port: gRPC's SO_REUSEPORT bind joined the
    # first server's, then the metrics bind failed with a 69-line traceback and exit 3
    for name, port in (("MLSERVER_GRPC_PORT", v2.grpc_port), ("MLSERVER_METRICS_PORT", v2.metrics_port)):
        proc = _launch(folder, 0, **{name: str(port)})
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use ({name})" in err


def _servers(folder) -> list[int]:
    """Live processes serving ``folder``: the launcher and its forks (which keep its command line)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            zombie = "zombie" in open(f"/proc/{entry}/status").read()
        except OSError:
            continue
        if str(folder).encode() in cmdline and b"mnistkit.launch_v2" in cmdline and not zombie:
            found.append(int(entry))
    return found


def _until_serving(proc) -> None:
    """Read the launcher's log up to its "serving ... on ..." line: the port is reserved and the
    supervisor handles SIGTERM; the servers are still importing."""
    for line in proc.stderr:
        if "[mnistkit.launch_v2] INFO - serving" in line:
            return
    raise AssertionError(f"the launcher exited with {proc.wait()} before it served")


def test_sigterm_while_the_servers_start_stops_them_all(trained_run, tmp_path):
    """SIGTERM while the template still imports (or forks): every process that starts is told
    to stop, none is left behind, and the launcher exits with 0."""
    from mnistkit.local._proc import free_port
    from mnistkit.local.mlserver import write_model_folder

    folder = write_model_folder(trained_run.artifact, tmp_path / "m", max_batch=8)
    for delay in (0.05, 0.4):
        proc = _launch(folder, free_port(), MNISTKIT_PROCESSES="2")
        _until_serving(proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert wait_until(lambda: not _servers(folder), 10), "a server process was left running"


def test_a_second_launcher_on_a_port_still_starting_is_refused(trained_run, tmp_path):
    """The first launcher holds the port from its first line, while its servers still import and
    load the model (nothing listens yet): a second one on that port says so and exits 2, instead
    of joining it with SO_REUSEPORT and serving whatever model it has."""
    from mnistkit.local._proc import free_port, http_status
    from mnistkit.local.mlserver import write_model_folder

    folder = write_model_folder(trained_run.artifact, tmp_path / "m", max_batch=8)
    port = free_port()
    first = _launch(folder, port, MNISTKIT_PROCESSES="1")
    try:
        _until_serving(first)
        second = _launch(folder, port, MNISTKIT_PROCESSES="1")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert f"cannot listen on 127.0.0.1:{port}: another mnistkit V2 server is starting there" in err
        assert "Traceback" not in err
        assert wait_until(lambda: http_status(f"http://127.0.0.1:{port}/v2/health/ready") == 200, 60)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_serving_v2_all_is_what_it_defines():
    """tests/test_public_api.py's check, run in the MLServer venv (the module imports MLServer)."""
    import subprocess

    code = (
        "import inspect, mnistkit.serving_v2 as m; "
        "d = {n for n, v in vars(m).items() if not n.startswith('_') and (inspect.isclass(v) or inspect.isfunction(v)) "
        "and v.__module__ == m.__name__}; assert d == set(m.__all__), (d, m.__all__)"
    )
    subprocess.run([mlserver_python(), "-c", code], check=True)


def test_debug_is_off_no_access_log_and_no_debug_lines(v2, digits):
    """MLServer defaults to debug (access log, DEBUG logging, tracebacks in 500s); the launcher turns it off."""
    assert request(v2.url + INFER, body=pixels_input(digits[0].reshape(-1).tolist(), [1, 784]))[0] == 200
    log = v2.log()
    assert "Loaded model 'mnist' successfully" in log  # the log is there, and it is quiet
    assert "POST /v2/models/mnist/infer" not in log and " DEBUG " not in log


def test_grpc_answers_like_rest_on_the_shared_port(v2, predictor, digits, tmp_path):
    """MLServer's gRPC data plane (both processes bind MLSERVER_GRPC_PORT) runs the same rules:
    INT32 pixels, raw PNG bytes (gRPC carries bytes, no base64), and a refused input."""
    import subprocess

    (tmp_path / "grpc_client.py").write_text(GRPC)
    (tmp_path / "d.png").write_bytes(png(digits[0]))
    args = [f"127.0.0.1:{v2.grpc_port}", json.dumps(digits[0].reshape(-1).tolist()), str(tmp_path / "d.png")]
    proc = subprocess.run(
        [mlserver_python(), str(tmp_path / "grpc_client.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    as_pixels, as_png, refused, unload = json.loads(proc.stdout)
    want = predictor.predict(digits[:1].astype(np.float32))
    for answer in (as_pixels, as_png):
        assert np.abs(np.asarray(answer["probabilities"]) - want[0]).max() < 1e-5
        assert answer["digits"] == [int(want.argmax())]
    assert refused["code"] == "INVALID_ARGUMENT" and "named 'pixels'" in refused["details"]
    assert unload["code"] != "OK" and "cannot load or unload" in unload["details"]


@pytest.mark.parametrize("action", ["unload", "load"])
def test_the_repository_api_cannot_unload_the_model(v2, action):
    """Found by review: one POST to .../unload took the model out of a process, which answered
    404 to inferences while its readiness stayed 200. Now refused, and every process serves."""
    status, body, _ = request(f"{v2.url}/v2/repository/models/mnist/{action}", body=b"")
    assert status == 403 and "cannot load or unload" in json.loads(body)["error"]
    assert all(request(v2.url + INFER, body=pixels_input(ONE, [1, 784]))[0] == 200 for _ in range(12))
    status, body, _ = request(f"{v2.url}/v2/repository/index", body=b"{}")
    assert status == 200 and json.loads(body)[0]["state"] == "READY"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MLSERVER_HTTP_PORT": "http"}, "is not a port number"),
        ({"MLSERVER_HTTP_PORT": "", "PORT": "99999"}, "is not a port number"),
        ({"MNISTKIT_PROCESSES": "two"}, "MNISTKIT_PROCESSES='two' is not a valid int"),
        ({"MLSERVER_HTTP_PORT": "{busy}"}, "Address already in use"),
        ({"MLSERVER_HTTP_PORT": "0", "MLSERVER_GRPC_PORT": "grpc"}, "MLSERVER_GRPC_PORT 'grpc' (MLServer's) is not"),
        (
            {"MLSERVER_HTTP_PORT": "0", "MLSERVER_GRPC_PORT": "0", "MLSERVER_METRICS_PORT": "0"},
            "holds no model-settings.json, so there is no model to serve",  # it served none, ready 200, 404s
        ),
    ],
    ids=["port not a number", "PORT out of range", "processes not a number", "port in use", "gRPC port", "no model"],
)
def test_the_launcher_refuses_bad_settings_in_one_line(tmp_path, env, says):
    import socket
    import subprocess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        env = {k: v.replace("{busy}", port) for k, v in env.items()}
        full = {**os.environ, "MLSERVER_HOST": "127.0.0.1", **env}
        proc = subprocess.run(
            [mlserver_python(), "-m", "mnistkit.launch_v2", str(tmp_path)],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
