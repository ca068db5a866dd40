"""Cluster resources, validated against the real CRD schemas that ship in mnistkit/schemas,
Kubernetes' PVC schema (cross-checked with the real kubernetes-validate) and the real
`polyaxon check`; mutation tests prove each validator bites."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mnistkit.cli.build import main as build_main
from mnistkit.errors import ManifestError
from mnistkit.manifests import ManifestConfig, cluster_images, manifests_for, polyaxon_check
from mnistkit.manifests.resources import argo_workflow, pvcs, seldon_deployment
from mnistkit.manifests.validate import (
    validate_inference_service,
    validate_pvcs,
    validate_seldon,
    validate_workflow,
)
from mnistkit.polyaxonfile import read_polyaxonfile
from mnistkit.search import SearchConfig, run_group
from support import REPO

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"127.0.0.1:5000/mnistkit/mnist@{DIGEST}"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    out = tmp_path_factory.mktemp("groups")
    spec = read_polyaxonfile(REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml")
    from dataclasses import replace

    spec = replace(spec, n_runs=2)
    return run_group(
        spec, SearchConfig(output_dir=str(out), group_name="g", train_samples=300, test_samples=300, max_epochs=1)
    )


@pytest.fixture
def cfg():
    return ManifestConfig(
        image=IMAGE, provenance={"artifact_sha256": "c" * 64, "run_id": "tiny"}, **cluster_images("127.0.0.1:5000")
    )


def test_writes_the_whole_set_from_a_group(group, tmp_path):
    files = manifests_for(group.group_dir, tmp_path / "cluster", image=IMAGE)
    assert sorted(p.name for p in files) == [
        "argo-workflow.yaml",
        "polyaxonfile.yaml",
        "pvcs.yaml",
        "seldondeployment.yaml",
    ]
    sd = yaml.safe_load((tmp_path / "cluster" / "seldondeployment.yaml").read_text())
    assert sd["apiVersion"] == "machinelearning.seldon.io/v1"
    pred = sd["spec"]["predictors"][0]
    container = pred["componentSpecs"][0]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["name"] == pred["graph"]["name"]
    assert pred["graph"]["type"] == "MODEL" and pred["graph"]["endpoint"]["type"] == "REST"
    assert sd["metadata"]["annotations"]["mnistkit.io/artifact-sha256"] == group.best.artifact_sha256
    assert sd["metadata"]["annotations"]["mnistkit.io/trial"] == group.best.name
    wf = yaml.safe_load((tmp_path / "cluster" / "argo-workflow.yaml").read_text())
    text = yaml.safe_dump(wf)
    assert "/var/run/docker.sock" not in text and "hostPath" not in text  # never the node's engine
    assert wf["spec"]["templates"][0]["sidecars"][0]["name"] == "dind"
    mounts = {m["name"]: m for m in wf["spec"]["templates"][0]["container"]["volumeMounts"]}
    assert mounts["docker-config"]["readOnly"] is True
    claims = [d["metadata"]["name"] for d in yaml.safe_load_all((tmp_path / "cluster" / "pvcs.yaml").read_text())]
    assert claims == ["mnist-data", "mnist-outputs", "mnist-build"]
    px = yaml.safe_load((tmp_path / "cluster" / "polyaxonfile.yaml").read_text())
    assert px["matrix"]["kind"] == "random" and px["matrix"]["seed"] == 1


def test_v1alpha2_for_older_clusters(group, tmp_path):
    manifests_for(group.group_dir, tmp_path, image=IMAGE, api_version="v1alpha2")
    sd = yaml.safe_load((tmp_path / "seldondeployment.yaml").read_text())
    assert sd["apiVersion"] == "machinelearning.seldon.io/v1alpha2"


def test_from_a_single_run(trained_run, tmp_path):
    manifests_for(trained_run.run_dir, tmp_path, image=IMAGE)
    px = yaml.safe_load((tmp_path / "polyaxonfile.yaml").read_text())
    assert "matrix" not in px and "--lr=0.1" in px["component"]["run"]["container"]["args"]


def test_a_run_trained_with_any_option_is_trained_so_on_the_cluster(mnist, tmp_path):
    """Found by review: a run's shift, label smoothing, eval-last and precision were left out of
    the cluster's polyaxonfile, which then trained another model than the one deployed."""
    from mnistkit.config import TrainConfig
    from mnistkit.train import fit

    run = fit(
        TrainConfig(
            epochs=2,
            train_samples=300,
            test_samples=200,
            shift=1,
            label_smoothing=0.1,
            eval_last=1,
            precision="fp32",
            output_dir=str(tmp_path / "runs"),
            run_name="r",
        ),
        mnist,
    )
    manifests_for(run.run_dir, tmp_path / "out", image=IMAGE)
    args = yaml.safe_load((tmp_path / "out" / "polyaxonfile.yaml").read_text())["component"]["run"]["container"]["args"]
    for flag in ("--shift=1", "--label-smoothing=0.1", "--eval-last=1", "--precision=fp32", "--epochs=2"):
        assert flag in args, (flag, args)


def test_a_groups_flags_given_beside_its_file_reach_the_cluster(tmp_path):
    """Found by review: `mnistkit-train -f FILE --label-smoothing 0.2` trained its trials with
    smoothing, but the cluster's polyaxonfile did not ask for it. The caps on samples and epochs
    were for the quick run here: the cluster runs the search whole."""
    spec = read_polyaxonfile(REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml")
    from dataclasses import replace

    group = run_group(
        replace(spec, n_runs=1),
        SearchConfig(
            output_dir=str(tmp_path / "g"),
            group_name="g",
            train_samples=300,
            test_samples=200,
            max_epochs=1,
            overrides={"label_smoothing": 0.2},
        ),
    )
    manifests_for(group.group_dir, tmp_path / "out", image=IMAGE)
    args = yaml.safe_load((tmp_path / "out" / "polyaxonfile.yaml").read_text())["component"]["run"]["container"]["args"]
    assert "--label-smoothing=0.2" in args, args
    assert not any(a.startswith(("--train-samples", "--test-samples", "--epochs=1")) for a in args)  # caps stay here


def test_images_without_a_registry_are_refused_not_sent_to_docker_hub(trained_run, tmp_path):
    """Found by review: with a Docker Hub --image and no --registry, the builder, build-tool and
    training images were named at Docker Hub's account 'mnistkit', which is not ours (and the
    build tool runs with the registry credentials mounted)."""
    with pytest.raises(ManifestError, match="need a registry the cluster pulls from"):
        manifests_for(trained_run.run_dir, tmp_path / "out", image="myuser/mnist:v1")
    assert not (tmp_path / "out").exists()
    manifests_for(trained_run.run_dir, tmp_path / "out", image="myuser/mnist:v1", registry="registry.example.com")
    wf = yaml.safe_load((tmp_path / "out" / "argo-workflow.yaml").read_text())
    assert "registry.example.com/mnistkit/build-tool:" in yaml.safe_dump(wf)


def test_a_rerun_for_the_v1_server_removes_the_v2_runs_inference_service(trained_run, tmp_path):
    """Found by review: `kubectl apply -f DIR` would have deployed the old InferenceService too."""
    manifests_for(trained_run.run_dir, tmp_path, image=IMAGE, server="mlserver")
    assert (tmp_path / "inferenceservice.yaml").exists()
    manifests_for(trained_run.run_dir, tmp_path, image=IMAGE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "argo-workflow.yaml",
        "polyaxonfile.yaml",
        "pvcs.yaml",
        "seldondeployment.yaml",
    ]


def _sd(cfg, version="v1"):
    return seldon_deployment(ManifestConfig(**{**cfg.__dict__, "api_version": version}))


SD_MUTATIONS = {
    "misspelt field": (lambda d: d["spec"]["predictors"][0].update(replica=1), "replica"),
    "missing required": (lambda d: d["spec"]["predictors"][0].pop("graph"), "graph"),
    "wrong type": (lambda d: d["spec"]["predictors"][0].update(replicas="one"), "'one' is not of type 'integer'"),
    "bad enum": (lambda d: d["spec"]["predictors"][0]["graph"].update(type="MODELL"), "'MODELL'"),
}


@pytest.mark.parametrize("version", ["v1", "v1alpha2"])
@pytest.mark.parametrize("case", list(SD_MUTATIONS))
def test_seldon_validator_bites(cfg, version, case):
    doc = _sd(cfg, version)
    validate_seldon(copy.deepcopy(doc))
    mutate, message = SD_MUTATIONS[case]
    mutate(doc)
    with pytest.raises(ManifestError, match=message.replace("(", "\\(")):
        validate_seldon(doc)


WF_MUTATIONS = {
    "misspelt field": (lambda d: d["spec"].update(entrypiont="x"), "entrypiont"),
    "missing required": (lambda d: d["spec"]["templates"][0]["container"].pop("image"), "image"),
    "wrong type": (lambda d: d["spec"].update(parallelism="x"), "'x' is not of type 'integer'"),
    "bad enum": (lambda d: d["spec"].update(artifactGC={"strategy": "Sometimes"}), "'Sometimes' is not one of"),
}


@pytest.mark.parametrize("case", list(WF_MUTATIONS))
def test_workflow_validator_bites(cfg, case):
    doc = argo_workflow(cfg)
    validate_workflow(copy.deepcopy(doc))
    mutate, message = WF_MUTATIONS[case]
    mutate(doc)
    with pytest.raises(ManifestError, match=message):
        validate_workflow(doc)


PVC_MUTATIONS = {
    "misspelt field": (lambda d: d["spec"].update(storageClas="fast"), "storageClas"),
    "missing required": (lambda d: d["spec"].update(dataSourceRef={"name": "x"}), "'kind' is a required property"),
    "wrong type": (lambda d: d["spec"]["resources"]["requests"].update(storage=[1]), "storage"),
    "bad enum": (lambda d: d["spec"].update(accessModes=["ReadWriteSometimes"]), "'ReadWriteSometimes' is not one of"),
}


def kubernetes_validate(doc, tmp_path):
    """The real kubernetes-validate --strict (its own venv: it needs jsonschema>=4)."""
    exe = REPO / ".venv-tools" / "bin" / "kubernetes-validate"
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run([str(exe), "--strict", "--quiet", str(path)], capture_output=True, text=True).returncode


@pytest.mark.parametrize("case", list(PVC_MUTATIONS))
def test_pvc_validator_bites_and_agrees_with_kubernetes_validate(cfg, case, tmp_path):
    docs = pvcs(cfg)
    validate_pvcs(copy.deepcopy(docs))
    assert kubernetes_validate(docs[0], tmp_path) == 0
    mutate, message = PVC_MUTATIONS[case]
    mutate(docs[0])
    with pytest.raises(ManifestError, match=message):
        validate_pvcs(docs)
    if case != "bad enum":  # the enum is the API server's rule, not in the OpenAPI schema kubernetes-validate reads
        assert kubernetes_validate(docs[0], tmp_path) != 0


@pytest.mark.parametrize("server", ["seldon", "mlserver"])
def test_serving_containers_run_restricted_on_a_read_only_root(cfg, server):
    """What the rehearsal runs them with (tests/rehearsal, tests/build/test_v2_image.py): the
    images keep their temporary files in /dev/shm when the root is read-only."""
    from dataclasses import replace

    from mnistkit.manifests.kserve import inference_service
    from mnistkit.manifests.resources import SERVING_SECURITY

    cfg = replace(cfg, server=server).validate()
    sdep = seldon_deployment(cfg)
    containers = [sdep["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]]
    validate_seldon(sdep)
    if server == "mlserver":
        isvc = inference_service(cfg)
        validate_inference_service(isvc)
        containers.append(isvc["spec"]["predictor"]["containers"][0])
    for c in containers:
        sc = c["securityContext"]
        assert sc == SERVING_SECURITY and sc is not SERVING_SECURITY
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False and "privileged" not in sc


def test_bad_name_is_refused_before_anything_is_written(trained_run, tmp_path):
    r = CliRunner(mix_stderr=False).invoke(
        build_main,
        ["manifests", str(trained_run.run_dir), "--image", IMAGE, "--out", str(tmp_path / "out"), "--name", "My_Model"],
    )
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "Error: --name 'My_Model' must start with a letter, hold only lower case letters, digits and '-', "
        "and be at most 45 characters (it names Services and resources with suffixes)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "1mnist"}, "--name '1mnist' must start with a letter"),  # KServe's webhook and Services refuse it
        ({"name": "m" * 46}, "at most 45 characters"),  # <name>-predictor-... would pass 63
        ({"workers": 0}, "workers must be at least 1"),
        ({"grace_seconds": -1}, "grace_seconds must be >= 0"),
        ({"data_size": "big"}, "data_size 'big' is not a Kubernetes quantity"),
        ({"cpu": "-1"}, "cpu '-1' is not a Kubernetes quantity"),
        # found by a new-user trial: written as given, refused by the API server
        ({"replicas": 99999999999}, "--replicas must be 0 .. 2147483647"),
        ({"storage_class": "Bad Class"}, "--storage-class 'Bad Class' is not a StorageClass name"),
    ],
)
def test_what_the_schemas_allow_but_the_cluster_refuses_is_refused_here(cfg, change, message):
    """The CRD schemas leave these open; the API server, KServe's webhook or the kubelet would not."""
    with pytest.raises(ManifestError, match=re.escape(message)):
        ManifestConfig(**{**cfg.__dict__, **change}).validate()


def test_invalid_polyaxonfile_writes_nothing(trained_run, tmp_path, monkeypatch):
    import mnistkit.polyaxonfile as pf

    real = pf.write_v1

    def broken(spec, path, **kw):
        real(spec, path, **kw)
        path.write_text(path.read_text().replace("kind: job", "kind: jobb"))

    monkeypatch.setattr(pf, "write_v1", broken)
    with pytest.raises(ManifestError, match="polyaxonfile is invalid"):
        manifests_for(trained_run.run_dir, tmp_path / "out", image=IMAGE)
    assert not list((tmp_path / "out").glob("*.yaml"))


def _leaves(node, path=""):
    """(key path, value) of every leaf of a YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, node


def _shape(doc):
    """Every key path of a document, and its images without tag or digest: what the code
    decides, not what the run decided (hashes, accuracy, versions)."""
    for path, value in _leaves(doc):
        if path.endswith(".image"):
            yield f"{path}={re.split(r'[@:]', str(value).rsplit('/', 1)[-1])[0]}"
        else:
            yield path


EXAMPLES = {
    "argo-workflow.yaml": {},
    "seldondeployment.yaml": {},
    "pvcs.yaml": {},
    "kserve/inferenceservice.yaml": {"server": "mlserver", "namespace": "default"},
    "kserve/seldondeployment-v2.yaml": {"server": "mlserver"},
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_cluster_folder_is_current_and_valid(group, tmp_path, name):
    """Each file of examples/cluster is valid and has the shape the code writes today."""
    example = REPO / "examples" / "cluster" / name
    docs = list(yaml.safe_load_all(example.read_text()))
    images = [v for d in docs for p, v in _leaves(d) if p.endswith(".image") and "/mnistkit/mnist" in v]
    opts = EXAMPLES[name]
    written = manifests_for(
        group.group_dir, tmp_path, image=images[0] if images else IMAGE, registry="registry.example.com", **opts
    )
    fresh = tmp_path / Path(name).name.replace("-v2", "")
    assert fresh in written
    fresh_docs = list(yaml.safe_load_all(fresh.read_text()))
    assert [sorted(_shape(d)) for d in docs] == [sorted(_shape(d)) for d in fresh_docs], f"regenerate {example}"
    if name.endswith("seldondeployment.yaml") or name.endswith("-v2.yaml"):
        validate_seldon(docs[0])
    elif name == "argo-workflow.yaml":
        validate_workflow(docs[0])
    elif name == "pvcs.yaml":
        validate_pvcs(docs)
    else:
        validate_inference_service(docs[0])


def test_the_examples_polyaxonfile_passes_the_real_polyaxon_check():
    """(Its shape follows the demo's search, not the test group's, so it is checked on its own.)"""
    polyaxon_check(REPO / "examples" / "cluster" / "polyaxonfile.yaml")  # raises ManifestError if it fails


@pytest.mark.cluster
@pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"), reason="opt-in: set KUBECONFIG to a cluster with the Seldon and Argo CRDs"
)
def test_server_side_dry_run(group, tmp_path):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    for f in manifests_for(group.group_dir, tmp_path, image=IMAGE):
        if f.name == "polyaxonfile.yaml":
            continue
        verb = "create" if f.name == "argo-workflow.yaml" else "apply"  # generateName needs create
        subprocess.run([kubectl, verb, "--dry-run=server", "-f", str(f)], check=True)
