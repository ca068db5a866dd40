"""The V2 image (`mnistkit-build --server mlserver`): built by the s2i contract with the V2 builder,
smoke-tested, pushed, pulled by digest; then rehearsed as the platforms start it — KServe's custom
predictor (the manifest's env, no args, behind real nginx routing by Host like KServe's ingress)
and Seldon's operator (port 9000) — and queried with mnistkit-query; hostile payloads to the image."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mnistkit.build.source import resolve_source
from mnistkit.build.verify_v2 import serve_image_v2, smoke_test_v2
from mnistkit.cli.query import main as query_main
from mnistkit.local._proc import free_port, wait_http
from support import CANARY, HOME, REPO, USER
from support.v2 import HOSTILE, request

pytestmark = pytest.mark.docker

IMAGES = REPO / "examples" / "images"
LABELS = json.loads((IMAGES / "labels.json").read_text())


@pytest.fixture(scope="session")
def v2_builder(docker_client):
    from mnistkit.build.builder_image import ensure_image

    return ensure_image(docker_client, "mlserver-onnx", cache_dir=HOME)  # the default: ONNX Runtime, no torch


@pytest.fixture(scope="session")
def v2_built(trained_run, docker_client, v2_builder, registry, tmp_path_factory):
    from mnistkit.build.model_image import BuildConfig, build_model

    return build_model(
        BuildConfig(
            source=str(trained_run.run_dir),
            image=f"{registry.address}/mnistkit/mnist-v2:ci",
            server="mlserver",
            builder=v2_builder,
            smoke_test=True,
            push=True,
            username=USER,
            password=CANARY,
            work_dir=str(tmp_path_factory.mktemp("work-v2")),
        ),
        docker_client,
    )


def test_build_smoke_push_pull_by_digest(v2_built, docker_client, trained_run, registry):
    assert v2_built.smoke["max_abs_diff"] <= 1e-4 and v2_built.smoke["images"] == 11
    assert v2_built.reference == f"{registry.address}/mnistkit/mnist-v2@{v2_built.digest}"
    docker_client.images.remove(v2_built.image, force=True)
    docker_client.images.pull(v2_built.reference, auth_config={"username": USER, "password": CANARY})
    again = smoke_test_v2(docker_client, v2_built.reference, resolve_source(trained_run.run_dir))
    assert again["max_abs_diff"] <= 1e-4


def test_labels_user_command_and_no_wheels_left(v2_built, docker_client, trained_run):
    img = docker_client.images.get(v2_built.reference)
    cfg = img.attrs["Config"]
    assert cfg["User"] == "1001" and cfg["Cmd"] == ["/usr/libexec/s2i/run"]
    assert "MNISTKIT_SERVER=mlserver" in cfg["Env"] and "MLSERVER_DEBUG=false" in cfg["Env"]
    labels = cfg["Labels"]
    assert labels["io.mnistkit.server"] == "mlserver"
    assert labels["io.mnistkit.artifact.sha256"] == trained_run.artifact_sha256
    assert "V2" in labels["org.opencontainers.image.description"]
    out = docker_client.containers.run(
        v2_built.reference,
        ["sh", "-c", "ls /microservice; pip list 2>/dev/null | grep -ci -E '^(mlserver|uvloop) '"],
        remove=True,
        network_disabled=True,
    ).decode()
    assert "wheels" not in out.split() and "model-settings.json" in out.split() and out.split()[-1] == "2"
    assert labels["io.mnistkit.runtime"] == "onnx" and float(labels["io.mnistkit.onnx.parity.max_abs_diff"]) <= 1e-5
    no_torch = docker_client.containers.run(
        v2_built.reference, ["python", "-c", "import torch"], remove=False, network_disabled=True, detach=True
    )
    assert no_torch.wait()["StatusCode"] != 0  # a lean image: torch is not there
    no_torch.remove()


def _query(args):
    return CliRunner(mix_stderr=False).invoke(query_main, ["--protocol", "v2", "--payload", "images", *args])


def _table_digits(stdout: str) -> dict[str, int]:
    return {ln.split()[0].rsplit("/", 1)[-1]: int(ln.split()[1]) for ln in stdout.splitlines()[1:]}


def _kserve_container(image: str) -> dict:
    """The container the generated InferenceService declares (KServe adds no env or args to a custom one)."""
    from mnistkit.manifests import ManifestConfig, cluster_images
    from mnistkit.manifests.kserve import inference_service

    cfg = ManifestConfig(
        image=image, server="mlserver", namespace="default", **cluster_images("127.0.0.1:5000", "mlserver")
    )
    container = inference_service(cfg.validate())["spec"]["predictor"]["containers"][0]
    assert "args" not in container and "command" not in container  # the image's own CMD runs
    return container


@pytest.mark.server
def test_rehearsal_as_kserve_starts_a_custom_predictor(v2_built, docker_client, tmp_path):
    """Knative mode: the manifest's env plus the PORT Knative sets (the launcher reads it when
    MLSERVER_HTTP_PORT is unset), and its securityContext (read-only root, no capabilities, no
    new privileges, non-root, an arbitrary uid) as runc gets it; gRPC and metrics on free ports only because this
    host network is shared. nginx routes by Host, as KServe's ingress does."""
    from support.kserve_gateway import V2Gateway
    from support.rehearsal import security_options

    port = free_port()
    spec = _kserve_container(v2_built.reference)
    env = {**{e["name"]: e["value"] for e in spec["env"]}, "PORT": str(port)}
    env.update(MLSERVER_GRPC_PORT=str(free_port()), MLSERVER_METRICS_PORT=str(free_port()))
    # and as OpenShift admits it: a uid from the namespace's range, not the image's own
    pod = {"runAsUser": 1000710000}
    security = security_options(
        spec["securityContext"], docker_client.images.get(v2_built.reference).attrs["Config"]["User"], pod
    )
    assert security["read_only"] and security["cap_drop"] == ["ALL"] and security["user"] == "1000710000"
    container = docker_client.containers.run(
        v2_built.reference, detach=True, network_mode="host", environment=env, **security
    )
    try:
        assert wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 120), container.logs(tail=10).decode()
        gw = V2Gateway(tmp_path / "nginx", port, name="mnist", namespace="default")
        try:
            r = _query(
                ["--route", "kserve", "--endpoint", gw.endpoint, "--namespace", "default"]
                + sorted(map(str, IMAGES.glob("*.png")))
            )
            assert r.exit_code == 0, r.stderr
            got = _table_digits(r.stdout)
            assert len(got) == 11 and sum(got[n] != LABELS[n] for n in got) <= 1
        finally:
            gw.stop()
        # the docs page works without internet: Swagger UI comes from the image
        status, page, _ = request(f"http://127.0.0.1:{port}/v2/docs", "GET")
        script = request(f"http://127.0.0.1:{port}/v2/docs/swagger-ui/swagger-ui-bundle.js", "GET")
        assert status == 200 and 'src="/v2/docs/swagger-ui/swagger-ui-bundle.js"' in page.decode()
        assert script[0] == 200 and len(script[1]) > 500_000
        container.stop(timeout=30)
        assert container.wait(timeout=60)["StatusCode"] == 0  # SIGTERM: both processes drain and exit 0
    finally:
        container.remove(force=True)


@pytest.mark.server
def test_rehearsal_as_seldons_operator_starts_it(v2_built, docker_client):
    """Seldon Core 1.x with protocol: v2 sets MLSERVER_HTTP_PORT/GRPC_PORT (9000/9500 there) and
    MLSERVER_MODEL_NAME=<container name>; the model keeps its name from model-settings.json."""
    env = {"MLSERVER_MODEL_NAME": "classifier", "PREDICTIVE_UNIT_ID": "classifier", "SELDON_DEPLOYMENT_ID": "mnist"}
    container, url = serve_image_v2(docker_client, v2_built.reference, env=env)
    try:
        port = url.rsplit(":", 1)[1]
        r = _query(["--route", "direct", "--endpoint", f"127.0.0.1:{port}", str(IMAGES / "mnist-test-0000.png")])
        assert r.exit_code == 0 and _table_digits(r.stdout) == {"mnist-test-0000.png": 7}, r.stderr
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def v2_container(v2_built, docker_client):
    container, url = serve_image_v2(docker_client, v2_built.reference)
    yield container, url
    container.remove(force=True)


@pytest.mark.server
def test_hostile_payloads_to_the_image_never_get_a_5xx(v2_container):
    container, url = v2_container
    results = {case: request(url + "/v2/models/mnist/infer", body=body)[0] for case, (body, _, _) in HOSTILE.items()}
    assert {c: s for c, s in results.items() if s != HOSTILE[c][1]} == {}
    assert request(url + "/v2/health/ready", "GET")[0] == 200
    logs = container.logs().decode(errors="replace")
    assert "Traceback" not in logs  # bad input is refused, not crashed on


@pytest.mark.server
def test_the_image_names_its_runtime_and_the_trained_run(v2_container, trained_run):
    """The metadata's platform is what serves (ONNX Runtime in the default image, not torch), and
    the log names the trained artifact's sha256, not the image copy's (which adds model.onnx)."""
    container, url = v2_container
    status, body, _ = request(url + "/v2/models/mnist", "GET")
    meta = json.loads(body)
    assert status == 200 and meta["platform"] == "onnxruntime"
    assert meta["versions"] == [trained_run.artifact_sha256[:12]]
    assert f"(sha256 {trained_run.artifact_sha256[:12]}, onnx) ready" in container.logs().decode(errors="replace")
