"""The Seldon model class in process, and served by the real seldon-core-microservice."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
import torch

from mnistkit.data import preprocess
from mnistkit.errors import ServingError
from mnistkit.local.microservice import start_microservice
from mnistkit.pixels import encode_png
from mnistkit.serving import MnistModel


@pytest.fixture(scope="module")
def model(trained_run):
    m = MnistModel(str(trained_run.artifact), metrics_interval=0)
    m.load()
    return m


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ms")
    service = start_microservice(
        env={"MNISTKIT_MODEL": str(trained_run.artifact), "MNISTKIT_METRICS_INTERVAL": "0"}, cwd=cwd
    )
    yield service
    service.stop()


def post(server, path, payload, **kw):
    return requests.post(server.url + path, json=payload, timeout=30, **kw)


def probs_of(body):
    t = body["data"].get("tensor")
    if t is not None:
        return np.array(t["values"]).reshape(t["shape"])
    return np.array(body["data"]["ndarray"])


# -- in process ---------------------------------------------------------------------


def test_serving_path_feeds_the_network_the_training_tensor(model, mnist, monkeypatch):
    seen = []
    real = model._predictor.network.forward
    monkeypatch.setattr(model._predictor.network, "forward", lambda x: (seen.append(x.clone()), real(x))[1])
    raw = mnist.test_images[:3]
    # what the 2018 client sent: int32 pixels of a PNG, flattened
    model.predict(raw.numpy().astype(np.int32).reshape(3, 784), [])
    assert torch.equal(seen[0], preprocess(raw))  # exactly the tensor training used


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 784), (1, 28, 28), (1, 1, 28, 28)])
def test_accepts_every_documented_shape(model, mnist, shape):
    img = mnist.test_images[0].numpy()
    probs = model.predict(img.reshape(shape).astype(np.float64), [])
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-5


def test_missing_or_tampered_artifact_fails_at_start(trained_run, tmp_path):
    with pytest.raises(ServingError, match="cannot serve: no model at"):
        MnistModel(str(tmp_path / "none"))
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained_run.artifact, copy)
    w = next(copy.glob("weights-*"))
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ServingError, match="modified"):
        MnistModel(str(copy))


def test_metrics_are_handed_over_once_per_interval(trained_run, mnist):
    from seldon_core.user_model import SeldonNotImplementedError

    m = MnistModel(str(trained_run.artifact), metrics_interval=60)
    m.predict(mnist.test_images[:3].numpy(), [])
    assert sum(x["value"] for x in m.metrics()) == 3  # the first call hands over
    m.predict(mnist.test_images[:3].numpy(), [])
    with pytest.raises(SeldonNotImplementedError):
        m.metrics()  # within the interval: Seldon skips its shared-memory update
    assert int(m._pending.sum()) == 3  # nothing lost, handed over next time


def test_metrics_count_predictions_per_digit(model, mnist):
    model.metrics()  # reset
    probs = model.predict(mnist.test_images[:20].numpy(), [])
    counts = {m["tags"]["digit"]: m["value"] for m in model.metrics() if m["key"] == "mnistkit_predictions_total"}
    want = np.bincount(probs.argmax(axis=1), minlength=10)
    assert counts == {str(d): int(v) for d, v in enumerate(want) if v}
    assert model.metrics() == []


# -- over HTTP, the real microservice -----------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("path", ["/predict", "/api/v0.1/predictions", "/api/v1.0/predictions"])
def test_routes_with_tensor_and_ndarray(server, model, mnist, path):
    imgs = mnist.test_images[:5].numpy().astype(np.int32)
    want = model.predict(imgs, [])
    one = post(server, path, {"data": {"names": [], "tensor": {"shape": [784], "values": imgs[0].ravel().tolist()}}})
    assert one.status_code == 200, one.text
    assert np.abs(probs_of(one.json()) - want[:1]).max() <= 1e-5
    batch = post(server, path, {"data": {"ndarray": imgs.reshape(5, 784).tolist()}})
    assert batch.status_code == 200
    body = batch.json()
    assert body["data"]["names"] == [str(d) for d in range(10)]
    assert np.abs(probs_of(body) - want).max() <= 1e-5
    assert body["meta"]["tags"]["model_sha256"] == model.sha256


@pytest.mark.server
def test_bindata_png(server, model, mnist):
    img = mnist.test_images[1].numpy()
    r = post(server, "/api/v1.0/predictions", {"binData": base64.b64encode(encode_png(img)).decode()})
    assert r.status_code == 200, r.text
    assert np.abs(probs_of(r.json()) - model.predict(img, [])).max() <= 1e-5


@pytest.mark.server
def test_http_equals_in_process_and_accuracy_matches_the_record(server, model, mnist, trained_run):
    # the train/serve skew guard: every test digit, over HTTP, in batches of 250 (the default batch limit is 256)
    correct = 0
    for i in range(0, 10000, 250):
        imgs = mnist.test_images[i : i + 250].numpy()
        r = post(
            server,
            "/api/v1.0/predictions",
            {"data": {"tensor": {"shape": [250, 784], "values": imgs.ravel().tolist()}}},
        )
        assert r.status_code == 200
        got = probs_of(r.json())
        if i == 0:
            assert np.abs(got - model.predict(imgs, [])).max() <= 1e-5
        correct += int((got.argmax(axis=1) == mnist.test_labels[i : i + 250].numpy()).sum())
    assert correct / 10000 == trained_run.best_accuracy


BAD = {
    "wrong element count": {"data": {"ndarray": [[0] * 700]}},
    "tensor shape and values disagree": {"data": {"tensor": {"shape": [1, 784], "values": [0] * 10}}},
    "empty": {"data": {"ndarray": []}},
    "NaN": {"data": {"tensor": {"shape": [784], "values": [0] * 783 + ["NaN"]}}},
    "out of range": {"data": {"ndarray": [[300] * 784]}},
    "negative": {"data": {"ndarray": [[-1] * 784]}},
    "strings": {"data": {"ndarray": [["a"] * 784]}},
    "strData": {"strData": "hello"},
    "ragged": {"data": {"ndarray": [[0] * 784, [0] * 3]}},
    "not an image": {"binData": base64.b64encode(b"not a png").decode()},
    "over batch limit": {"data": {"tensor": {"shape": [300, 784], "values": [0] * (300 * 784)}}},
}


@pytest.mark.server
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_with_seldon_status(server, case):
    payload = BAD[case]
    if case == "NaN":  # JSON has no NaN literal; send what Python's json writes
        import json

        r = requests.post(
            server.url + "/api/v1.0/predictions",
            data=json.dumps(payload).replace('"NaN"', "NaN"),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    else:
        r = post(server, "/api/v1.0/predictions", payload)
    assert r.status_code == 400, (case, r.status_code, r.text)
    status = r.json()["status"]
    assert status["reason"] == "MNISTKIT_BAD_INPUT" and status["info"], status  # Seldon 1.x: code -1, status 1
    assert requests.get(server.url + "/health/ping", timeout=5).status_code == 200


@pytest.mark.server
def test_metadata_health_and_metrics(server, model):
    meta = requests.get(server.url + "/metadata", timeout=5).json()
    assert meta["custom"]["artifact_sha256"] == model.sha256
    assert meta["inputs"][0]["shape"] == [-1, 784]
    health = requests.get(server.url + "/health/status", timeout=10)
    assert health.status_code == 200
    probs = probs_of(health.json())
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-4
    post(server, "/predict", {"data": {"ndarray": [[0] * 784]}})
    post(server, "/predict", {"data": {"ndarray": [[999] * 784]}})  # refused
    post(server, "/predict", {"data": {"ndarray": [[0] * 784]}})  # flushes the refused count
    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    assert "mnistkit_predictions_total" in text and "mnistkit_refused_total" in text


def _counter(text: str, name: str) -> float:
    """The sum of a Prometheus counter's samples (every label set) in an exposition ``text``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.server
def test_a_bursts_last_counts_reach_seldon_without_more_traffic(trained_run, tmp_path):
    """The launcher (as the image runs it), one worker, counters handed over once a second: 5
    predictions and a refused request in a burst, then silence. Before, only the first
    prediction reached Seldon's metrics (the rest waited for a next request that never came)."""
    import sys
    import time

    service = start_microservice(
        command=[sys.executable, "-m", "mnistkit.serve"],
        env={"MNISTKIT_MODEL": str(trained_run.artifact), "MNISTKIT_METRICS_INTERVAL": "1"},
        cwd=tmp_path,
    )
    try:
        for _ in range(5):
            assert post(service, "/api/v1.0/predictions", {"data": {"ndarray": [[0] * 784]}}).status_code == 200
        assert post(service, "/api/v1.0/predictions", {"data": {"ndarray": [[999] * 784]}}).status_code == 400
        time.sleep(2.5)  # two intervals, no requests
        text = requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).text
        assert _counter(text, "mnistkit_predictions_total") == 5, text[-2000:]
        assert _counter(text, "mnistkit_refused_total") == 1
    finally:
        service.stop()


@pytest.mark.server
def test_counts_are_not_lost_under_load(trained_run, tmp_path):
    """Three clients for 4 s on one worker, its counters handed over by a request and by the
    hand-over thread at once: every answered prediction is counted. Before, the two threads
    each wrote back their own copy of the worker's counters and up to 4 in 10 were lost."""
    import sys
    import threading
    import time

    service = start_microservice(
        command=[sys.executable, "-m", "mnistkit.serve"],
        env={"MNISTKIT_MODEL": str(trained_run.artifact), "MNISTKIT_METRICS_INTERVAL": "0.05"},
        cwd=tmp_path,
    )
    answered, until = [], time.monotonic() + 4

    def client() -> None:
        with requests.Session() as s:
            n = 0
            while time.monotonic() < until:
                r = s.post(service.url + "/api/v1.0/predictions", json={"data": {"ndarray": [[0] * 784]}}, timeout=20)
                n += r.status_code == 200
            answered.append(n)

    try:
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)  # the last hand-over
        text = requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).text
        assert sum(answered) > 100 and _counter(text, "mnistkit_predictions_total") == sum(answered)
    finally:
        service.stop()


@pytest.mark.parametrize(
    "env, says",
    [
        ({"MNISTKIT_MODEL": "{tmp}/nope"}, "cannot serve: no model at"),
        ({"MNISTKIT_BODY_TIMEOUT": "abc"}, "MNISTKIT_BODY_TIMEOUT='abc' is not a valid float"),
        ({"MNISTKIT_BODY_TIMEOUT": "0"}, "MNISTKIT_BODY_TIMEOUT=0.0 must be more than 0"),
        # found by review: each was a traceback from every worker and exit 3
        ({"MNISTKIT_RUNTIME": "onnx"}, "has no ONNX model; build the image with --runtime onnx"),
        ({"GUNICORN_GRACEFUL_TIMEOUT": "abc"}, "GUNICORN_GRACEFUL_TIMEOUT='abc' is not a whole number"),
    ],
    ids=["no model", "not a number", "zero", "onnx without model.onnx", "graceful timeout not a number"],
)
def test_the_launcher_refuses_what_cannot_serve_in_one_line(trained_run, tmp_path, env, says):
    """python -m mnistkit.serve (what the image runs): one Error: line, exit 1, no traceback."""
    import os
    import subprocess
    import sys

    full = {
        **os.environ,
        "MNISTKIT_MODEL": str(trained_run.artifact),
        **{k: v.format(tmp=tmp_path) for k, v in env.items()},
    }
    cmd = [sys.executable, "-m", "mnistkit.serve", "mnistkit.serving.MnistModel", "--service-type", "MODEL"]
    proc = subprocess.run(cmd, env=full, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pkg_resources is deprecated" not in proc.stderr
