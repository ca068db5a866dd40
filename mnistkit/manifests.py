"""Cluster resources for the pipeline past one machine, checked against the real schemas.

* SeldonDeployment (``machinelearning.seldon.io/v1``, or ``v1alpha2`` for older clusters)
  serving the pushed image, pinned by digest when known;
* an Argo ``Workflow`` that packages and pushes in the cluster with the builder-tool image,
  talking to a docker-in-docker sidecar (never the node's ``/var/run/docker.sock``), the
  model read from a PVC and the registry credentials from a docker-config Secret;
* the search as a current polyaxonfile;
* PersistentVolumeClaims for data, outputs and the build source.

Validation: the CRDs' ``openAPIV3Schema`` with every object that lists ``properties``
treated as closed (an API server prunes unknown fields silently, so a typo would pass),
``graph.type`` checked against Seldon's enum, Argo's JSON schema too, and
``kubernetes-validate --strict`` for the PVCs. The schemas are read from
``$MNISTKIT_SCHEMAS`` (default: ``shared/schemas`` beside the repository).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import ManifestError

__all__ = ["ManifestConfig", "manifests_for", "polyaxon_check", "schemas_dir", "seldon_deployment", "argo_workflow", "pvcs", "validate_seldon",
           "validate_workflow", "validate_pvcs", "write_manifests", "GRAPH_TYPES"]

GRAPH_TYPES = ("MODEL", "ROUTER", "COMBINER", "TRANSFORMER", "OUTPUT_TRANSFORMER")
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def schemas_dir() -> Path:
    env = os.environ.get("MNISTKIT_SCHEMAS")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "schemas"


@dataclass(frozen=True)
class ManifestConfig:
    """What the cluster resources say. Names must be DNS-1123 labels."""

    image: str  # repository:tag or repository@sha256:digest
    name: str = "mnist"
    namespace: str = "seldon"
    replicas: int = 1
    api_version: str = "v1"  # SeldonDeployment version: v1 or v1alpha2
    cpu: str = "500m"
    memory: str = "1Gi"
    memory_limit: str = "2Gi"
    workers: int = 2
    registry_secret: str = "regcred"
    tool_image: str = f"mnistkit/build-tool:{__version__}"
    builder_image: str = f"mnistkit/builder:{__version__}"
    dind_image: str = "docker:27-dind-rootless"
    train_image: str = f"mnistkit/train:{__version__}"
    storage_class: str | None = None
    data_size: str = "1Gi"
    outputs_size: str = "10Gi"
    build_size: str = "2Gi"
    source_path: str = "/outputs/model"  # where the Argo step finds the run/group on the outputs PVC
    provenance: dict[str, str] = field(default_factory=dict)

    def validate(self) -> "ManifestConfig":
        for label, value in (("--name", self.name), ("--namespace", self.namespace), ("--registry-secret", self.registry_secret)):
            if len(value) > 63 or not DNS1123.fullmatch(value):
                raise ManifestError(f"{label} {value!r} is not a valid DNS-1123 label (lower case letters, digits and '-', at most 63)")
        if self.api_version not in ("v1", "v1alpha2"):
            raise ManifestError(f"--api-version must be v1 or v1alpha2 (got {self.api_version!r})")
        if self.replicas < 0:
            raise ManifestError(f"--replicas must be >= 0 (got {self.replicas})")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError(f"--image {self.image!r} is not an image reference")
        return self

    @property
    def claims(self) -> dict[str, str]:
        return {"data": f"{self.name}-data", "outputs": f"{self.name}-outputs", "build": f"{self.name}-build"}


def _labels(cfg: ManifestConfig) -> dict[str, str]:
    out = {"app": "seldon", "app.kubernetes.io/name": cfg.name, "app.kubernetes.io/managed-by": "mnistkit"}
    sha = cfg.provenance.get("artifact_sha256", "")
    if sha:
        out["mnistkit.io/artifact"] = sha[:12]
    return out


def seldon_deployment(cfg: ManifestConfig) -> dict[str, Any]:
    """A SeldonDeployment with one MODEL node over REST, the container named like the node."""
    container = {
        "name": "classifier",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "GUNICORN_WORKERS", "value": str(cfg.workers)}, {"name": "GUNICORN_THREADS", "value": "1"}],
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}, "limits": {"memory": cfg.memory_limit}},
    }
    annotations = {f"mnistkit.io/{k.replace('_', '-')}": str(v) for k, v in cfg.provenance.items()}
    return {
        "apiVersion": f"machinelearning.seldon.io/{cfg.api_version}",
        "kind": "SeldonDeployment",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": _labels(cfg), "annotations": annotations},
        "spec": {
            "name": cfg.name,
            "predictors": [{
                "name": "default",
                "replicas": cfg.replicas,
                "labels": {"version": cfg.provenance.get("artifact_sha256", "unknown")[:12]},
                "graph": {"name": "classifier", "type": "MODEL", "endpoint": {"type": "REST"}, "children": []},
                "componentSpecs": [{"spec": {"containers": [container], "imagePullSecrets": [{"name": cfg.registry_secret}]}}],
            }],
        },
    }


def argo_workflow(cfg: ManifestConfig) -> dict[str, Any]:
    """Package and push in the cluster: mnistkit-build in the builder-tool image, against a
    rootless docker-in-docker sidecar in the same pod. The node's docker socket is never
    mounted, so the workflow cannot reach the node's engine, images or other containers."""
    repo = cfg.image.split("@")[0].rpartition(":")[0] if ":" in cfg.image.split("@")[0].rsplit("/", 1)[-1] else cfg.image.split("@")[0]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{cfg.name}-build-", "namespace": cfg.namespace, "labels": {"app.kubernetes.io/managed-by": "mnistkit"}},
        "spec": {
            "entrypoint": "build-and-push",
            "arguments": {"parameters": [
                {"name": "source", "value": cfg.source_path},
                {"name": "image", "value": repo},
                {"name": "tag", "value": cfg.provenance.get("artifact_sha256", "latest")[:12] or "latest"},
                {"name": "builder", "value": cfg.builder_image},
            ]},
            "volumes": [
                {"name": "outputs", "persistentVolumeClaim": {"claimName": cfg.claims["outputs"], "readOnly": True}},
                {"name": "build", "persistentVolumeClaim": {"claimName": cfg.claims["build"]}},
                {"name": "docker-config", "secret": {"secretName": cfg.registry_secret,
                                                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            ],
            "templates": [{
                "name": "build-and-push",
                "container": {
                    "image": cfg.tool_image,
                    "args": ["{{workflow.parameters.source}}", "--image", "{{workflow.parameters.image}}:{{workflow.parameters.tag}}",
                             "--builder", "{{workflow.parameters.builder}}", "--push", "--work-dir", "/build", "--json"],
                    # the sidecar's daemon, on the pod's own loopback: unreachable from outside the pod
                    "env": [{"name": "DOCKER_HOST", "value": "tcp://127.0.0.1:2375"},
                            {"name": "DOCKER_CONFIG", "value": "/docker-config"}],
                    "volumeMounts": [
                        {"name": "outputs", "mountPath": "/outputs", "readOnly": True},
                        {"name": "build", "mountPath": "/build"},
                        {"name": "docker-config", "mountPath": "/docker-config", "readOnly": True},
                    ],
                },
                "sidecars": [{
                    "name": "dind",
                    "image": cfg.dind_image,
                    "args": ["--host=tcp://127.0.0.1:2375", "--tls=false"],
                    "env": [{"name": "DOCKER_TLS_CERTDIR", "value": ""}],
                    # rootless dockerd runs as uid 1000 in a user namespace; it needs an
                    # unconfined sandbox to nest, not the node's daemon
                    "securityContext": {"privileged": True, "runAsUser": 1000},
                    "mirrorVolumeMounts": True,
                }],
            }],
        },
    }


def pvcs(cfg: ManifestConfig) -> list[dict[str, Any]]:
    sizes = {"data": cfg.data_size, "outputs": cfg.outputs_size, "build": cfg.build_size}
    out = []
    for role, claim in cfg.claims.items():
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": sizes[role]}}}
        if cfg.storage_class:
            spec["storageClassName"] = cfg.storage_class
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": cfg.namespace,
                                 "labels": {"app.kubernetes.io/managed-by": "mnistkit", "mnistkit.io/role": role}},
                    "spec": spec})
    return out


# -- validation -----------------------------------------------------------------------


def _close(schema: Any) -> Any:
    """Treat every object schema with properties as closed (no unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


def _schema_file(name: str) -> Path:
    path = schemas_dir() / name
    if not path.exists():
        raise ManifestError(f"schema {path} not found; point $MNISTKIT_SCHEMAS at the folder holding the CRD schemas")
    return path


@functools.lru_cache(maxsize=None)
def _crd_schema(filename: str, version: str, closed: bool = True) -> dict[str, Any]:
    path = _schema_file(filename)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = json.loads(path.read_text()) if path.suffix == ".json" else yaml.load(path.read_text(), Loader=loader)
    spec = doc["spec"]
    if "versions" in spec and any("schema" in v for v in spec["versions"]):
        match = [v for v in spec["versions"] if v["name"] == version]
        if not match:
            raise ManifestError(f"{path.name} has no version {version}")
        schema = match[0]["schema"]["openAPIV3Schema"]
    else:
        schema = spec["validation"]["openAPIV3Schema"]
    return _close(schema) if closed else schema


def _errors(schema: dict[str, Any], doc: dict[str, Any], what: str) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{what} is invalid at {where}: {e.message}{more}")


def validate_seldon(doc: dict[str, Any]) -> None:
    """Against the Seldon Core 1.17.1 CRD (closed objects) and the graph.type enum; a
    v1alpha2 document also against the 2018 (0.2.3) CRD."""
    version = str(doc.get("apiVersion", "")).rpartition("/")[2]
    if version not in ("v1", "v1alpha2", "v1alpha3"):
        raise ManifestError(f"SeldonDeployment apiVersion {doc.get('apiVersion')!r} is not machinelearning.seldon.io/v1|v1alpha2|v1alpha3")
    _errors(_crd_schema("seldondeployment-crd-v1.17.1.yaml", version), doc, f"SeldonDeployment ({version})")
    if version == "v1alpha2":
        # the 2018 CRD describes only part of a predictor (no componentSpecs, no labels), so it
        # is applied open: it still enforces its enums (graph.type, endpoint.type) and types
        _errors(_crd_schema("seldondeployment-crd-v0.2.3.json", version, False), doc, "SeldonDeployment (v1alpha2, Seldon 0.2.3)")

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") not in GRAPH_TYPES:
            raise ManifestError(f"SeldonDeployment is invalid at {where}.type: {node.get('type')!r} is not one of {', '.join(GRAPH_TYPES)}")
        for i, child in enumerate(node.get("children") or []):
            walk(child, f"{where}.children.{i}")

    for i, p in enumerate(doc.get("spec", {}).get("predictors", [])):
        walk(p.get("graph"), f"spec.predictors.{i}.graph")


@functools.lru_cache(maxsize=None)
def _argo_json_schema() -> dict[str, Any]:
    doc = json.loads(_schema_file("argo-jsonschema-v3.7.18.json").read_text())
    return {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow", "definitions": doc["definitions"]}


def validate_workflow(doc: dict[str, Any]) -> None:
    """Against the Argo 3.7.18 Workflow CRD (closed objects) and Argo's JSON schema."""
    _errors(_crd_schema("argo-workflow-crd-v3.7.18.yaml", "v1alpha1"), doc, "Workflow")
    _errors(_argo_json_schema(), doc, "Workflow (Argo JSON schema)")


def _kubernetes_validate() -> str:
    env = os.environ.get("MNISTKIT_KUBERNETES_VALIDATE")
    candidates = [env] if env else []
    candidates += [shutil.which("kubernetes-validate") or "",
                   str(Path(__file__).resolve().parent.parent / ".venv-tools" / "bin" / "kubernetes-validate")]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise ManifestError("kubernetes-validate is not installed; install it in its own environment "
                        "(it needs jsonschema>=4, which seldon-core 1.17.1 forbids) or set MNISTKIT_KUBERNETES_VALIDATE")


ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Filesystem", "Block")


def validate_pvcs(docs: list[dict[str, Any]]) -> None:
    """``kubernetes-validate --strict`` on each claim (the real tool, in its own venv), plus
    the enums the API server enforces but the OpenAPI schema does not state."""
    for d in docs:
        spec = d.get("spec") or {}
        bad = [m for m in spec.get("accessModes") or [] if m not in ACCESS_MODES]
        if bad:
            raise ManifestError(f"PersistentVolumeClaim is invalid at spec.accessModes: {bad[0]!r} is not one of {', '.join(ACCESS_MODES)}")
        if "volumeMode" in spec and spec["volumeMode"] not in VOLUME_MODES:
            raise ManifestError(f"PersistentVolumeClaim is invalid at spec.volumeMode: {spec['volumeMode']!r} is not one of {', '.join(VOLUME_MODES)}")
    exe = _kubernetes_validate()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, d in enumerate(docs):
            p = Path(tmp) / f"pvc-{i}.yaml"
            p.write_text(yaml.safe_dump(d))
            paths.append(str(p))
        proc = subprocess.run([exe, "--strict", "--quiet", *paths], capture_output=True, text=True)
    if proc.returncode != 0:
        line = next((x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("ERROR")), proc.stdout.strip()[:300])
        line = re.sub(r" ?/\S+pvc-[0-9]+\.yaml", "", line)  # the temporary file's name says nothing
        raise ManifestError(f"PersistentVolumeClaim is invalid: {line}")


def write_manifests(out_dir: str | os.PathLike[str], cfg: ManifestConfig, *, polyaxonfile: Any = None,
                    validate: bool = True) -> list[Path]:
    """Validate every resource, then write them all into ``out_dir`` (or nothing at all).

    ``polyaxonfile`` is a callable writing the search's polyaxonfile to a given path."""
    cfg.validate()
    resources = {
        "seldondeployment.yaml": [seldon_deployment(cfg)],
        "argo-workflow.yaml": [argo_workflow(cfg)],
        "pvcs.yaml": pvcs(cfg),
    }
    if validate:
        validate_seldon(resources["seldondeployment.yaml"][0])
        validate_workflow(resources["argo-workflow.yaml"][0])
        validate_pvcs(resources["pvcs.yaml"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        for name, docs in resources.items():
            (staging / name).write_text(yaml.safe_dump_all(copy.deepcopy(docs), sort_keys=False))
        if polyaxonfile is not None:
            polyaxonfile(staging / "polyaxonfile.yaml")
        written = []
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def polyaxon_check(path: Path) -> None:
    """The real ``polyaxon check -f`` on a polyaxonfile, when the client is installed."""
    import sys

    exe = shutil.which("polyaxon") or str(Path(sys.executable).parent / "polyaxon")
    if not os.path.exists(exe):
        raise ManifestError("the polyaxon client is not installed, so the polyaxonfile cannot be checked; "
                            "pip install 'mnistkit[polyaxon]' or pass --no-validate")
    proc = subprocess.run([exe, "check", "-f", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
        detail = next((x for x in lines if "valid" in x.lower() and "version" not in x.lower()), lines[-1] if lines else "?")
        raise ManifestError(f"polyaxonfile is invalid: {detail}")


_RUN_FLAGS = ("batch_size", "test_batch_size", "epochs", "lr", "momentum", "seed", "optimizer", "scheduler",
              "weight_decay", "train_samples", "test_samples")


def manifests_for(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, image: str,
                  validate: bool = True, **options: Any) -> list[Path]:
    """Write the cluster resources for a run or search group and its image (by digest when
    known): SeldonDeployment, Argo Workflow, polyaxonfile, PVCs. Nothing is written unless
    every resource validates."""
    from .packaging import resolve_source
    from .polyaxonfile import SearchSpec, write_v1
    from .search import spec_from_group

    src = resolve_source(source)
    m = src.manifest
    provenance = {"artifact_sha256": src.sha256, "run_id": str(m.get("run", {}).get("id", "")),
                  "test_accuracy": str(m.get("metrics", {}).get("test_accuracy", "")), "mnistkit_version": __version__}
    if src.group:
        provenance.update(group=src.group, trial=src.trial or "")
    name = Path(source).resolve().name
    cfg = ManifestConfig(image=image, provenance=provenance, source_path=f"/outputs/{name}", **options).validate()
    if src.group:
        spec = spec_from_group(source)
    else:
        tc = m.get("train_config", {})
        flags = tuple(f"--{k.replace('_', '-')}={tc[k]}" for k in _RUN_FLAGS if tc.get(k) is not None)
        spec = SearchSpec("single", args=flags, name=cfg.name)

    def polyaxonfile(path: Path) -> None:
        write_v1(spec, path, image=cfg.train_image, extra_args=("--data-dir=/data",), volumes={cfg.claims["data"]: "/data"})
        if validate:
            polyaxon_check(path)

    return write_manifests(out_dir, cfg, polyaxonfile=polyaxonfile, validate=validate)
