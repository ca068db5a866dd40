"""mnistkit.deferred: the modules the V2 server imports when first used. The stand-ins' own rules
on a package made here; then, in the real MLServer 1.7 (its venv), that the launcher's import
leaves them unimported and that every feature they belong to still works through them: the pandas
codec, Kafka, tracing (spans reach an OTLP receiver) and MLServer's inference pool."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnistkit.deferred import DEFERRED, Forward, StandIn, defer, deferred
from mnistkit.local._proc import wait_until
from mnistkit.local.mlserver import start_mlserver
from mnistkit.runtime import load_predictor
from support.v2 import GRPC, mlserver_python, pixels_input, png, request

# --- the stand-ins' rules, on a package made here ---------------------------------------------

PACKAGE = {
    "__init__.py": "",
    "heavy/__init__.py": "import sys\nsys.modules['fake_heavy_ran'] = sys\nfrom .part import value\n"
    "def make(x):\n    return ('made', x)\nclass Thing:\n    kind = 'real'\n",
    "heavy/part.py": "value = 42\n",
    "broken.py": "raise ImportError('the real module cannot import')\nname = 1\n",
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    for rel, text in PACKAGE.items():
        path = tmp_path / "fakepkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n.startswith("fakepkg") or n == "fake_heavy_ran"]:
        del sys.modules[name]


def test_a_forwarder_imports_the_module_when_first_called_not_before(fake):
    assert defer({"fakepkg.heavy": {"make": Forward, "Thing": Forward}}) == ["fakepkg.heavy"]
    from fakepkg.heavy import Thing, make  # as MLServer imports a deferred name

    assert "fake_heavy_ran" not in sys.modules and deferred() == ["fakepkg.heavy"]
    assert make(3) == ("made", 3)  # the real function, called
    assert "fake_heavy_ran" in sys.modules and deferred() == []
    assert not isinstance(sys.modules["fakepkg.heavy"], StandIn)
    assert Thing.kind == "real" and "deferred fakepkg.heavy.Thing" in repr(Thing)


def test_any_other_attribute_or_a_submodule_imports_the_real_module(fake):
    defer({"fakepkg.heavy": {"make": Forward}})
    import fakepkg.heavy as stand_in

    assert isinstance(stand_in, StandIn)
    assert stand_in.value == 42  # not a deferred name: the real module's
    assert sys.modules["fakepkg.heavy"].make(1) == ("made", 1)

    for name in [n for n in sys.modules if n.startswith("fakepkg")]:
        del sys.modules[name]
    defer({"fakepkg.heavy": {}})
    from fakepkg.heavy import part  # a package's stand-in has the real folder as its __path__

    assert part.value == 42


def test_a_module_that_fails_to_import_keeps_its_stand_in_and_raises_each_time(fake):
    defer({"fakepkg.broken": {"name": Forward}})
    from fakepkg.broken import name

    for _ in range(2):
        with pytest.raises(ImportError, match="cannot import"):
            name()
        assert isinstance(sys.modules["fakepkg.broken"], StandIn)


def test_modules_imported_already_or_not_installed_are_left_alone(fake):
    import fakepkg.heavy  # noqa: F401

    assert defer({"fakepkg.heavy": {}, "fakepkg.missing": {}, "no_such_package.sub": {}}) == []
    assert not isinstance(sys.modules["fakepkg.heavy"], StandIn) and "fakepkg.missing" not in sys.modules


# --- in the real MLServer ------------------------------------------------------------------------


def _run(code: str, cwd: Path) -> dict:
    out = subprocess.run([mlserver_python(), "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


AFTER_PRELOAD = """
import json, sys
from mnistkit.launch_v2 import _preload
from mnistkit.deferred import deferred
_preload()
heavy = ["pandas", "aiokafka", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
         "opentelemetry.instrumentation.fastapi", "opentelemetry.instrumentation.grpc", "mlserver.parallel.pool"]
"""


def test_the_launchers_import_leaves_the_deferred_modules_unimported(tmp_path):
    got = _run(
        AFTER_PRELOAD + "print(json.dumps({'deferred': deferred(), "
        "'imported': [m for m in heavy if m in sys.modules and m not in deferred()]}))",
        tmp_path,
    )
    assert got == {"deferred": sorted(DEFERRED), "imported": []}


def test_the_pandas_codec_works_when_first_used_and_keeps_its_place(tmp_path):
    got = _run(
        AFTER_PRELOAD
        + """
from mlserver.codecs import PandasCodec
from mlserver.codecs.base import _codec_registry as registry
from mlserver.types import InferenceRequest, RequestInput
order = list(registry._request_codecs)
codec = registry.find_request_codec("pd")
import pandas as pd  # a caller's DataFrame type hint: found without importing the codec
hint = registry.find_request_codec(type_hint=pd.DataFrame)
still = "mlserver.codecs.pandas" in deferred()
request = InferenceRequest(inputs=[RequestInput(name="a", shape=[2], datatype="INT32", data=[1, 2]),
                                   RequestInput(name="b", shape=[2], datatype="FP32", data=[0.5, 1.5])])
frame = codec.decode_request(request)
print(json.dumps({
    "order": order, "hint": [hint is codec, still], "frame": type(frame).__name__, "columns": list(frame.columns),
    "a": frame["a"].tolist(), "by_payload": registry.find_request_codec_by_payload(frame).ContentType,
    "encoded": [o.name for o in PandasCodec.encode_response("m", frame).outputs],
    "real_now": registry.find_request_codec("pd").__module__ + str(registry.find_request_codec("pd") is not codec),
    "order_after": list(registry._request_codecs), "deferred": deferred()}))
""",
        tmp_path,
    )
    plain = _run(
        "import json, mlserver\nfrom mlserver.codecs.base import _codec_registry as r\n"
        "print(json.dumps(list(r._request_codecs)))",
        tmp_path,
    )
    assert got["order"] == got["order_after"] == plain  # "pd" where MLServer registers it
    assert got["frame"] == "DataFrame" and got["columns"] == ["a", "b"] and got["a"] == [1, 2]
    assert got["hint"] == [True, True] and got["by_payload"] == "pd" and got["encoded"] == ["a", "b"]
    assert got["real_now"] == "mlserver.codecs.pandasTrue" and "mlserver.codecs.pandas" not in got["deferred"]


def test_the_lazy_pandas_codec_acts_as_the_real_class(tmp_path):
    """Threads using it at once, a classmethod beyond RequestCodec's API, a subclass's override,
    pickling, and the stand-in reachable as its package's attribute, with the real spec."""
    got = _run(
        AFTER_PRELOAD
        + """
import importlib.util, pickle, threading
import mlserver.codecs, mlserver.parallel
from mlserver.codecs import PandasCodec
from mlserver.types import InferenceRequest, RequestInput
request = InferenceRequest(inputs=[RequestInput(name="a", shape=[2], datatype="INT32", data=[1, 2])])
results = []
def use():
    try:
        results.append(len(PandasCodec.decode_request(request)))
    except Exception as e:
        results.append(repr(e))
threads = [threading.Thread(target=use) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
import pandas as pd
frame = pd.DataFrame({"a": [1, 2]})
class Mine(PandasCodec):
    @classmethod
    def encode_outputs(cls, payload, use_bytes=True):
        return [o.model_copy(update={"name": "mine"}) for o in super().encode_outputs(payload, use_bytes)]
print(json.dumps({
    "threads": results,
    "outputs": [o.name for o in PandasCodec.encode_outputs(frame)],
    "override": [o.name for o in Mine.encode_response("m", frame).outputs],
    "pickled": pickle.loads(pickle.dumps(PandasCodec)).__module__,
    "parent": type(mlserver.parallel).__name__,
    "spec": importlib.util.find_spec("mlserver.kafka").name,
}))
""",
        tmp_path,
    )
    assert got["threads"] == [2] * 8 and got["outputs"] == ["a"] and got["override"] == ["mine"]
    assert got["pickled"] == "mlserver.codecs.pandas" and got["parent"] == "StandIn" and got["spec"] == "mlserver.kafka"


@pytest.mark.server
def test_a_serving_process_never_loads_the_deferred_modules(trained_run, tmp_path, mnist):
    """After answering, the server processes have mapped none of pandas', aiokafka's or the OTLP
    exporter's files (read from /proc/PID/maps): the stand-ins were never touched."""
    import psutil

    with start_mlserver(trained_run.artifact, python=mlserver_python(), workdir=tmp_path, processes=2) as v2:
        image = mnist.test_images[0].numpy().astype(int)
        for _ in range(4):
            status, body, _ = request(
                v2.url + "/v2/models/mnist/infer", body=pixels_input(image.reshape(-1).tolist(), [1, 784])
            )
            assert status == 200, body
        servers = psutil.Process(v2.proc.pid).children(recursive=True)
        assert len(servers) == 2
        maps = {
            p.pid: Path(f"/proc/{p.pid}/maps").read_text() + Path(f"/proc/{p.pid}/cmdline").read_text() for p in servers
        }
    for pid, text in maps.items():
        opened = [name for name in ("/pandas/", "/aiokafka/", "/opentelemetry/exporter/") if name in text]
        assert opened == [], (pid, opened)
        assert "/onnxruntime/" in text or "/torch/" in text  # the maps are the server's: its runtime is there


def test_kafka_on_makes_mlservers_real_kafka_server(tmp_path):
    got = _run(
        AFTER_PRELOAD
        + """
from mlserver import MLServer
from mlserver.settings import Settings
server = MLServer(Settings(kafka_enabled=True, kafka_servers="127.0.0.1:9", parallel_workers=0))
print(json.dumps({"type": type(server._kafka_server).__module__ + "." + type(server._kafka_server).__name__,
                  "aiokafka": "aiokafka" in sys.modules}))
""",
        tmp_path,
    )
    assert got == {"type": "mlserver.kafka.server.KafkaServer", "aiokafka": True}


@pytest.mark.server
def test_tracing_on_sends_spans_of_rest_and_grpc_requests(trained_run, tmp_path, mnist):
    """MLSERVER_TRACING_SERVER set: the launcher's servers export the spans of a REST and a gRPC
    request over OTLP/gRPC to a receiver (tests/support/otlp_receiver.py, OpenTelemetry's own
    service stubs)."""
    port_file = tmp_path / "otlp.port"
    receiver = subprocess.Popen(
        [mlserver_python(), str(Path(__file__).parent / "support" / "otlp_receiver.py"), str(port_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    image = mnist.test_images[0].numpy().astype(np.uint8)
    (tmp_path / "grpc_client.py").write_text(GRPC)
    (tmp_path / "d.png").write_bytes(png(image))
    try:
        assert wait_until(lambda: port_file.exists() and port_file.read_text(), 30)
        env = {"MLSERVER_TRACING_SERVER": f"127.0.0.1:{port_file.read_text()}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with start_mlserver(
            trained_run.artifact, python=mlserver_python(), workdir=tmp_path, processes=2, env=env
        ) as v2:
            pixels = image.astype(int).reshape(-1).tolist()
            status, body, _ = request(v2.url + "/v2/models/mnist/infer", body=pixels_input(pixels, [1, 784]))
            assert status == 200, body
            args = [f"127.0.0.1:{v2.grpc_port}", json.dumps(pixels), str(tmp_path / "d.png")]
            client = subprocess.run(
                [mlserver_python(), str(tmp_path / "grpc_client.py"), *args],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert client.returncode == 0, client.stderr
            time.sleep(0.5)  # exported every 100 ms, and flushed again as the servers stop
        receiver.terminate()
        spans, _ = receiver.communicate(timeout=30)
    finally:
        receiver.kill()
    names = spans.splitlines()
    assert any("/v2/models/" in s and "infer" in s for s in names), names  # FastAPI's instrumentation
    assert any(s.endswith("GRPCInferenceService/ModelInfer") for s in names), names  # gRPC's


@pytest.mark.server
def test_mlservers_inference_pool_still_serves(trained_run, tmp_path, mnist):
    """MLSERVER_PARALLEL_WORKERS=1: MLServer's pool, deferred at start, is made and serves."""
    env = {"MLSERVER_PARALLEL_WORKERS": "1"}
    with start_mlserver(trained_run.artifact, python=mlserver_python(), workdir=tmp_path, processes=1, env=env) as v2:
        image = mnist.test_images[0].numpy().astype(int)
        status, body, _ = request(
            v2.url + "/v2/models/mnist/infer", body=pixels_input(image.reshape(-1).tolist(), [1, 784])
        )
        assert status == 200, body
        want = load_predictor(trained_run.artifact).predict(image[None].astype("float32")).argmax(1).tolist()
        assert json.loads(body)["outputs"][1]["data"] == want
    assert "Shutdown of default inference pool complete" in v2.log(), v2.log()[-3000:]  # the pool was there
