"""The cluster path, rehearsed: every resource mnistkit writes for a cluster, run here as Kubernetes
and its engines would run it (tests/support/rehearsal). No cluster can run on this machine, so the
harness stands in for one; what only a real cluster can check is listed in the README.

The chain: PVCs (volumes named like the claims, MNIST where the walkthrough puts it) -> one trial
of the exported polyaxonfile in the training image -> the Argo Workflow building and pushing the
model image in its docker-in-docker sidecar -> the SeldonDeployment pulled by digest and started as
the operator starts it, behind nginx on the Ambassador path -> mnistkit-query with only --endpoint.
Then, for each resource, a mutation that breaks it for a cluster must break the rehearsal.
"""

from __future__ import annotations

import base64
import copy
import json
from importlib.resources import files

import pytest
import yaml
from click.testing import CliRunner

from mnistkit.artifact import load_model
from mnistkit.build.builder_image import BASE_IMAGE, KINDS, image_tag
from mnistkit.build.verify import digit_labels
from mnistkit.cli.build import main as build_main
from mnistkit.cli.query import main as query_main
from mnistkit.manifests import manifests_for
from mnistkit.manifests.validate import validate_seldon
from mnistkit.polyaxonfile import read_polyaxonfile
from mnistkit.search import SearchConfig, plan_trials, run_group
from support import CANARY, HOME, REPO, USER
from support.rehearsal import (
    Gateway,
    Node,
    build_dind_standin,
    node_engine,
    run_polyaxon_trial,
    run_workflow,
    start_seldon,
)

pytestmark = [pytest.mark.rehearsal, pytest.mark.docker]

SEARCH = """\
version: 1
kind: group
hptuning:
  concurrency: 1
  grid_search:
  matrix:
    lr: {values: [0.1, 0.05]}
declarations: {batch_size: 64, epochs: 2}
run:
  cmd: mnistkit-train --batch-size={{ batch_size }} --epochs={{ epochs }} --lr={{ lr }} --train-samples=20000
"""


@pytest.fixture(scope="module")
def published(docker_engine, docker_client, builder_image, registry):
    """Every image the cluster files name, built and pushed by mnistkit's own CLI."""
    refs = {}
    for kind in ("seldon-onnx", "tool", "train"):
        r = CliRunner(mix_stderr=False).invoke(
            build_main,
            [
                "builder",
                "--kind",
                kind,
                "--registry",
                registry.address,
                "--push",
                "--username",
                USER,
                "--password-stdin",
                "--docker-host",
                docker_engine.host,
            ],
            input=CANARY + "\n",
        )
        assert r.exit_code == 0, r.stderr
        refs[kind] = r.stdout.strip().rsplit(" -> ", 1)[1]  # the pushed reference, by digest
        assert refs[kind].startswith(f"{registry.address}/{image_tag(KINDS[kind]).split(':')[0]}@sha256:")
    return refs


@pytest.fixture(scope="module")
def node(docker_client, registry, published, tmp_path_factory):
    engine = node_engine(HOME / "rehearsal-node").start()
    client = engine.client()
    n = Node(client, registry.address, {"username": USER, "password": CANARY}, tmp_path_factory.mktemp("node"))
    auth = base64.b64encode(f"{USER}:{CANARY}".encode()).decode()
    n.secrets["regcred"] = {
        ".dockerconfigjson": json.dumps(  # what `kubectl create secret docker-registry` stores
            {"auths": {registry.address: {"username": USER, "password": CANARY, "auth": auth}}}
        ).encode()
    }
    n.pull(published["tool"])  # an image for the harness's own scratch containers
    build_dind_standin(docker_client, client, BASE_IMAGE, HOME)
    yield n
    n.remove_claims()
    n.remove_images(keep=("docker:", "mnistkit-rehearsal/"))
    engine.stop()


@pytest.fixture(scope="module")
def cluster_files(tmp_path_factory, registry, published):
    """A small search group here, then its cluster files as `mnistkit-build manifests` writes them."""
    root = tmp_path_factory.mktemp("cluster")
    (root / "search.yml").write_text(SEARCH)
    spec = read_polyaxonfile(root / "search.yml")
    group = run_group(
        spec,
        SearchConfig(
            output_dir=str(root / "runs"), group_name="mnist", train_samples=500, test_samples=500, max_epochs=1
        ),
    )
    out = root / "files"
    manifests_for(group.group_dir, out, image=f"{registry.address}/mnistkit/mnist:pending")
    docs = {p.stem: list(yaml.safe_load_all(p.read_text())) for p in out.glob("*.yaml")}
    return {"spec": spec, "docs": docs, "root": root}


@pytest.fixture(scope="module")
def claims(node, cluster_files):
    """`kubectl apply -f pvcs.yaml`, then MNIST copied into the data claim under MNIST/raw/."""
    raw = REPO / "examples" / "data" / "MNIST" / "raw"
    for pvc in cluster_files["docs"]["pvcs"]:
        role = pvc["metadata"]["labels"]["mnistkit.io/role"]
        data = {f"MNIST/raw/{p.name}": p.read_bytes() for p in raw.glob("*.gz")} if role == "data" else None
        node.claim(pvc["metadata"]["name"], data)
    return {p["metadata"]["labels"]["mnistkit.io/role"]: p["metadata"]["name"] for p in cluster_files["docs"]["pvcs"]}


def _first_trial(cluster_files):
    return plan_trials(cluster_files["spec"])[0]


def rehearse_trial(node, claims, doc, params):
    """One trial of ``doc``; fails unless it leaves a verified run, trained with every input it was given."""
    code, logs, run_uuid = run_polyaxon_trial(node, doc, params)
    assert code == 0, logs[-2000:]
    run_dir = node.read(claims["outputs"], f"{doc['name']}/{run_uuid}")
    load_model(run_dir)  # verified: checksums, no pickle
    config = json.loads((run_dir / "config.json").read_text())["config"]
    ignored = {k: v for k, v in params.items() if config.get(k) != v}
    assert not ignored, f"the trial ignored its inputs {ignored}"
    return {"params": params, "uuid": run_uuid, "run_dir": run_dir, "source": f"/outputs/{doc['name']}/{run_uuid}"}


@pytest.fixture(scope="module")
def trial(node, claims, cluster_files):
    return rehearse_trial(node, claims, cluster_files["docs"]["polyaxonfile"][0], _first_trial(cluster_files))


def test_a_polyaxon_trial_trains_in_the_training_image_onto_the_outputs_claim(trial):
    model = load_model(trial["run_dir"])
    config = json.loads((trial["run_dir"] / "config.json").read_text())["config"]
    assert config["lr"] == trial["params"]["lr"] and config["epochs"] == 2 and config["data_dir"] == "/data"
    assert model.manifest["metrics"]["test_accuracy"] > 0.9


@pytest.fixture(scope="module")
def workflow(node, trial, cluster_files, registry):
    wf = cluster_files["docs"]["argo-workflow"][0]
    run = run_workflow(node, wf, {"source": trial["source"], "tag": "rehearsal"})
    assert run.code == 0, run.logs[-3000:] + run.sidecar_logs[-2000:]
    summary, _ = json.JSONDecoder().raw_decode(run.logs[run.logs.index("{") :])  # the tool's --json summary
    return {**summary, "sidecar_logs": run.sidecar_logs}


def test_the_argo_workflow_builds_in_its_sidecar_and_pushes_with_the_secret(workflow, registry, trial):
    assert "graphdriver(s)=overlay2" in workflow["sidecar_logs"]  # its engine keeps images on the emptyDir
    assert workflow["reference"].startswith(f"{registry.address}/mnistkit/mnist@sha256:")
    assert workflow["labels"]["io.mnistkit.run.id"] == trial["uuid"]


def test_the_seldon_deployment_serves_the_pushed_digest_behind_the_ambassador_path(
    node, workflow, trial, tmp_path, registry
):
    out = tmp_path / "files"
    manifests_for(trial["run_dir"], out, image=workflow["reference"])  # the user's step: the digest the build pushed
    sdep = yaml.safe_load((out / "seldondeployment.yaml").read_text())
    validate_seldon(sdep)
    seldon = start_seldon(node, sdep)
    gateway = Gateway(tmp_path / "nginx")
    try:
        gateway.route(sdep["metadata"]["namespace"], sdep["metadata"]["name"], seldon.socket)
        digits = sorted(str(p) for p in (files("mnistkit") / "assets" / "digits").iterdir() if p.name.endswith(".png"))
        r = CliRunner(mix_stderr=False).invoke(query_main, ["--endpoint", gateway.endpoint, "--json", *digits])
        assert r.exit_code == 0, r.stderr
        labels = digit_labels()
        got = {
            json.loads(line)["image"].rsplit("/", 1)[-1]: json.loads(line)["digit"] for line in r.stdout.splitlines()
        }
        assert got == {name: labels[name] for name in got} and len(got) == 11
    finally:
        gateway.stop()
        seldon.pod.delete(grace=seldon.grace)


# -- mutations: a change that breaks a resource for a cluster breaks its rehearsal -------------------


def _polyaxon(cluster_files, mutate):
    doc = copy.deepcopy(cluster_files["docs"]["polyaxonfile"][0])
    mutate(doc["component"]["run"])
    return doc


def _mount_data_elsewhere(run):
    run["container"]["volumeMounts"][0]["mountPath"] = "/mnt/data"  # the trainer reads --data-dir=/data


def _drop_the_lr_input(run):
    run["container"]["args"] = [a for a in run["container"]["args"] if not a.startswith("--lr=")]


def _rename_the_claim(run):
    run["volumes"][0]["persistentVolumeClaim"]["claimName"] = "mnist-dataa"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_mount_data_elsewhere, "MNIST files not found"),
        (_drop_the_lr_input, "the trial ignored its inputs"),
        (_rename_the_claim, "would stay Pending"),
    ],
    ids=[
        "pvc: data mounted where the trainer does not read",
        "polyaxonfile: an input the container ignores",
        "pvc: a claim the cluster does not have",
    ],
)
def test_a_broken_polyaxonfile_or_claim_fails_its_rehearsal(node, claims, cluster_files, mutate, expected):
    with pytest.raises(AssertionError, match=expected):
        rehearse_trial(node, claims, _polyaxon(cluster_files, mutate), _first_trial(cluster_files))


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"builder": "{registry}/mnistkit/builder:no-such-tag"}, "is not in the registry"),
        ({"source": "/outputs/no-such-run"}, "no model at /outputs/no-such-run"),
    ],
    ids=["argo: a builder image that does not exist", "argo: a source the outputs claim does not hold"],
)
def test_a_broken_workflow_fails_its_rehearsal(node, trial, cluster_files, registry, override, expected):
    wf = cluster_files["docs"]["argo-workflow"][0]
    params = {
        "source": trial["source"],
        "tag": "broken",
        **{k: v.format(registry=registry.address) for k, v in override.items()},
    }
    run = run_workflow(node, wf, params)
    assert run.code != 0 and expected in run.logs, run.logs[-2000:]


def test_a_workflow_without_docker_storage_on_a_volume_is_caught(node, trial, cluster_files):
    """Kubernetes ignores an image's VOLUME: without the emptyDir the sidecar's engine falls back to vfs."""
    wf = copy.deepcopy(cluster_files["docs"]["argo-workflow"][0])
    sidecar = wf["spec"]["templates"][0]["sidecars"][0]
    sidecar.pop("volumeMounts")
    wf["spec"]["templates"][0]["container"].update(command=["sleep", "15"], args=[])  # start the pod, build nothing
    run = run_workflow(node, wf, {"source": trial["source"]})
    assert "graphdriver(s)=vfs" in run.sidecar_logs, run.sidecar_logs[-2000:]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(image=c["image"].split("@")[0] + "@sha256:" + "0" * 64), "not found"),
        (lambda c: c.update(name="model"), "no container is named like the graph node"),
        (lambda c: c["securityContext"].update(runAsUser=0), "runAsUser breaks non-root policy"),
        # the read-only root is real: temporary files kept on it (not /dev/shm) stop the server
        (lambda c: c["env"].append({"name": "TMPDIR", "value": "/tmp"}), "did not become ready"),
    ],
    ids=[
        "seldon: an image digest the registry does not hold",
        "seldon: a container the graph does not name",
        "seldon: root where the context says non-root",
        "seldon: temporary files on the read-only root",
    ],
)
def test_a_broken_seldon_deployment_fails_its_rehearsal(node, workflow, trial, tmp_path, mutate, expected):
    manifests_for(trial["run_dir"], tmp_path, image=workflow["reference"])
    sdep = yaml.safe_load((tmp_path / "seldondeployment.yaml").read_text())
    mutate(sdep["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0])
    with pytest.raises(Exception, match=expected):
        start_seldon(node, sdep, timeout=30)
