"""Cluster resources for a V2 image: the KServe InferenceService (against the shipped KServe 0.20
CRD with closed objects, plus the webhook rules) and the SeldonDeployment with protocol: v2 (the
Seldon 1.17.1 CRD); mutation tests prove each check bites; `mnistkit-build manifests --server
mlserver` writes them."""

from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner

from mnistkit.cli.build import main as build_main
from mnistkit.errors import ManifestError
from mnistkit.manifests import ManifestConfig, cluster_images
from mnistkit.manifests.kserve import inference_service, kserve_host
from mnistkit.manifests.resources import argo_workflow, seldon_deployment
from mnistkit.manifests.validate import validate_inference_service, validate_seldon, validate_workflow
from support import REPO

DIGEST = "sha256:" + "cd" * 32
IMAGE = f"127.0.0.1:5000/mnistkit/mnist-v2@{DIGEST}"


@pytest.fixture
def cfg():
    images = cluster_images("127.0.0.1:5000", "mlserver")
    return ManifestConfig(image=IMAGE, provenance={"artifact_sha256": "c" * 64}, server="mlserver", **images)


def test_the_inference_service_is_a_valid_custom_v2_predictor(cfg):
    doc = inference_service(cfg.validate())
    validate_inference_service(doc)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = doc["spec"]["predictor"]
    assert "protocolVersion" not in predictor  # not a field of a custom predictor: PROTOCOL env instead
    c = predictor["containers"][0]
    assert c["name"] == "kserve-container" and c["image"] == IMAGE and "@sha256:" in c["image"]
    assert {"name": "PROTOCOL", "value": "v2"} in c["env"] and "args" not in c and "command" not in c
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "2"


@pytest.mark.parametrize(
    ("mode", "host"), [("Standard", "mnist-seldon.example.com"), ("Knative", "mnist.seldon.example.com")]
)
def test_both_deployment_modes_validate_and_name_their_host(cfg, mode, host):
    from dataclasses import replace

    c = replace(cfg, kserve_mode=mode).validate()
    validate_inference_service(inference_service(c))
    assert kserve_host(c) == host


def _predictor(doc):
    return doc["spec"]["predictor"]


MUTATIONS = {
    "protocolVersion on a custom predictor": (
        lambda d: _predictor(d).update(protocolVersion="v2"),
        "Additional properties",
    ),
    "typo in a container field": (
        lambda d: _predictor(d)["containers"][0].update(imagePullPolcy="Always"),
        "Additional",
    ),
    "container without a name": (lambda d: _predictor(d)["containers"][0].pop("name"), "'name' is a required"),
    "port named http (Knative refuses)": (
        lambda d: _predictor(d)["containers"][0]["ports"][0].update(name="http"),
        "http1, h2c",
    ),
    "two ports": (
        lambda d: _predictor(d)["containers"][0]["ports"].append({"name": "h2c", "containerPort": 8081}),
        "one port",
    ),
    "PORT set by hand": (
        lambda d: _predictor(d)["containers"][0]["env"].append({"name": "PORT", "value": "8080"}),
        "set by Knative",
    ),
    "PROTOCOL v3": (lambda d: _predictor(d)["containers"][0]["env"][0].update(value="v3"), "v1 or v2"),
    "minReplicas as text": (lambda d: _predictor(d).update(minReplicas="one"), "is not of type"),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_inference_service_validator_bites(cfg, case):
    doc = copy.deepcopy(inference_service(cfg.validate()))
    mutate, message = MUTATIONS[case]
    mutate(doc)
    with pytest.raises(ManifestError, match=message):
        validate_inference_service(doc)


def test_the_seldon_deployment_says_protocol_v2_and_probes_v2_health(cfg):
    doc = seldon_deployment(cfg.validate())
    validate_seldon(doc)
    assert doc["spec"]["protocol"] == "v2"
    c = doc["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # the operator's SetEnvVar drops the whole env when these are set by hand (see ManifestConfig)
    assert not {e["name"] for e in c["env"]} & {
        "MLSERVER_HTTP_PORT",
        "MLSERVER_GRPC_PORT",
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT",
    }
    step = argo_workflow(cfg)["spec"]["templates"][0]["container"]["args"]
    assert step[-2:] == ["--server", "mlserver"]
    validate_workflow(argo_workflow(cfg))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"api_version": "v1alpha2"}, "needs SeldonDeployment v1"),
        ({"kserve_mode": "Serverless"}, "Standard or Knative"),
    ],
)
def test_v2_config_errors(cfg, change, message):
    from dataclasses import replace

    with pytest.raises(ManifestError, match=message):
        replace(cfg, **change).validate()


def test_build_manifests_server_mlserver_writes_the_v2_set(trained_run, tmp_path):
    out = tmp_path / "cluster"
    args = ["manifests", str(trained_run.run_dir), "--image", IMAGE, "--out", str(out), "--server", "mlserver"]
    r = CliRunner(mix_stderr=False).invoke(build_main, [*args, "--kserve-mode", "Knative", "--namespace", "default"])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "argo-workflow.yaml",
        "inferenceservice.yaml",
        "polyaxonfile.yaml",
        "pvcs.yaml",
        "seldondeployment.yaml",
    ]
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    validate_inference_service(isvc)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["metadata"]["annotations"]["mnistkit.io/artifact-sha256"] == trained_run.artifact_sha256
    assert yaml.safe_load((out / "seldondeployment.yaml").read_text())["spec"]["protocol"] == "v2"
    assert (
        "mlserver-onnx"
        in yaml.safe_load((out / "argo-workflow.yaml").read_text())["spec"]["arguments"]["parameters"][3]["value"]
    )


def test_examples_cluster_kserve_file_is_current_and_valid():
    doc = yaml.safe_load((REPO / "examples" / "cluster" / "kserve" / "inferenceservice.yaml").read_text())
    validate_inference_service(doc)
    validate_seldon(yaml.safe_load((REPO / "examples" / "cluster" / "kserve" / "seldondeployment-v2.yaml").read_text()))
