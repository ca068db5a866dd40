"""The cluster resources, as plain dicts (no I/O, no validation):

* a SeldonDeployment (``machinelearning.seldon.io/v1``, or ``v1alpha2`` for older clusters)
  serving the pushed image, pinned by digest when known, in a restricted, read-only security
  context — ``protocol: v2`` for a V2 (``--server mlserver``) image; the KServe
  InferenceService is in ``kserve.py``;
* an Argo ``Workflow`` that packages and pushes in the cluster with the build-tool image,
  talking to a docker-in-docker sidecar in the same pod (never the node's
  ``/var/run/docker.sock``), the model read from a PVC and the registry credentials from a
  docker-config Secret;
* PersistentVolumeClaims for data, outputs and the build scratch.

The images the files name (model, builder, build tool, training) are at the registry the
user gives, tagged as mnistkit tags them: by a digest of what goes into them.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError
from ..imageref import ImageRef

__all__ = ["ManifestConfig", "seldon_deployment", "argo_workflow", "pvcs", "DNS1123", "FS_GROUP", "SERVING_SECURITY"]

DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: A deployment's name: it also names Services (DNS-1035: a letter first; KServe's webhook asks
#: the same of an InferenceService) and resources named after it with a suffix
#: (``<name>-predictor-...``), which must stay within 63 characters.
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
NAME_MAX = 45
#: A Kubernetes quantity, not negative (``500m``, ``1Gi``, ``2e3``).
QUANTITY = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
#: The group every pod runs with (``securityContext.fsGroup``), so mnistkit's images (user
#: 1001, group 0) can write the volumes they are given.
FS_GROUP = 1001
#: The serving container's securityContext: what Kubernetes' "restricted" Pod Security Standard
#: asks, and a read-only root. The images run as user 1001 and keep their temporary files in
#: /dev/shm when /tmp is read-only (their s2i run scripts), so they serve as they are.
SERVING_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class ManifestConfig:
    """What the cluster resources say. Names must be DNS-1123 labels."""

    image: str  # the model image: repository@sha256:digest (best) or repository:tag
    builder_image: str  # the s2i builder the Argo step builds with
    tool_image: str  # the build tool the Argo step runs
    train_image: str  # the image the Polyaxon trials run
    name: str = "mnist"
    namespace: str = "seldon"
    replicas: int = 1
    api_version: str = "v1"  # SeldonDeployment version: v1 or v1alpha2
    cpu: str = "500m"
    memory: str = "1Gi"
    memory_limit: str = "2Gi"
    workers: int = 2
    grace_seconds: int = 30  # terminationGracePeriodSeconds: in-flight requests finish within it
    server: str = "seldon"  # what the image serves with: seldon (v1 protocol) or mlserver (V2)
    kserve_mode: str = "Standard"  # InferenceService deployment mode: Standard (raw) or Knative
    registry_secret: str = "regcred"
    dind_image: str = "docker:27-dind"
    storage_class: str | None = None
    data_size: str = "1Gi"
    outputs_size: str = "10Gi"
    build_size: str = "2Gi"
    source_path: str = "/outputs/model"  # where the Argo step finds the run/group on the outputs PVC
    provenance: dict[str, str] = field(default_factory=dict)

    def validate(self) -> "ManifestConfig":
        if len(self.name) > NAME_MAX or not NAME.fullmatch(self.name):
            raise ManifestError(
                f"--name {self.name!r} must start with a letter, hold only lower case letters, digits and '-', "
                f"and be at most {NAME_MAX} characters (it names Services and resources with suffixes)"
            )
        for label, value in (
            ("--namespace", self.namespace),
            ("--registry-secret", self.registry_secret),
        ):
            if len(value) > 63 or not DNS1123.fullmatch(value):
                raise ManifestError(
                    f"{label} {value!r} is not a valid DNS-1123 label (lower case letters, digits and '-', at most 63)"
                )
        if self.api_version not in ("v1", "v1alpha2"):
            raise ManifestError(f"--api-version must be v1 or v1alpha2 (got {self.api_version!r})")
        if self.server not in ("seldon", "mlserver"):
            raise ManifestError(f"--server must be seldon or mlserver (got {self.server!r})")
        if self.server == "mlserver" and self.api_version != "v1":
            raise ManifestError("protocol v2 needs SeldonDeployment v1 (Seldon Core >= 1.x), not v1alpha2")
        if self.kserve_mode not in ("Standard", "Knative"):
            raise ManifestError(f"--kserve-mode must be Standard or Knative (got {self.kserve_mode!r})")
        if not 0 <= self.replicas < 2**31:  # Kubernetes' replicas is an int32
            raise ManifestError(f"--replicas must be 0 .. 2147483647 (got {self.replicas})")
        if self.storage_class is not None and (
            len(self.storage_class) > 253 or not DNS1123_SUBDOMAIN.fullmatch(self.storage_class)
        ):
            raise ManifestError(
                f"--storage-class {self.storage_class!r} is not a StorageClass name (lower case letters, digits, "
                "'-' and '.', at most 253)"
            )
        if self.workers < 1:
            raise ManifestError(f"workers must be at least 1 (got {self.workers})")
        if self.grace_seconds < 0:
            raise ManifestError(f"grace_seconds must be >= 0 (got {self.grace_seconds})")
        for option, quantity in (
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("memory_limit", self.memory_limit),
            ("data_size", self.data_size),
            ("outputs_size", self.outputs_size),
            ("build_size", self.build_size),
        ):
            if not QUANTITY.fullmatch(str(quantity)):
                raise ManifestError(f"{option} {quantity!r} is not a Kubernetes quantity (e.g. 500m, 1Gi)")
        for what, ref in (
            ("--image", self.image),
            ("the builder image", self.builder_image),
            ("the build-tool image", self.tool_image),
            ("the training image", self.train_image),
        ):
            try:
                ImageRef.parse(ref)
            except Exception as e:
                raise ManifestError(f"{what}: {e}") from None
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


def _v2_container(cfg: ManifestConfig) -> dict[str, Any]:
    """The V2 image in a SeldonDeployment: the operator sets MLSERVER_HTTP_PORT (9000) and the
    metrics port; the container declares its http port only so the probe can ask for readiness."""
    return {
        "name": "classifier",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "MNISTKIT_PROCESSES", "value": str(cfg.workers)}, {"name": "MNISTKIT_THREADS", "value": "1"}],
        "ports": [{"name": "http", "containerPort": 9000, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}, "limits": {"memory": cfg.memory_limit}},
    }


def seldon_deployment(cfg: ManifestConfig) -> dict[str, Any]:
    """A SeldonDeployment with one MODEL node over REST, the container named like the node;
    ``protocol: v2`` when the image serves with MLServer.

    The operator sets the ports (PREDICTIVE_UNIT_*, MLSERVER_*), so the container sets none of them."""
    container = {
        "name": "classifier",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "GUNICORN_WORKERS", "value": str(cfg.workers)}, {"name": "GUNICORN_THREADS", "value": "1"}],
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}, "limits": {"memory": cfg.memory_limit}},
    }
    if cfg.server == "mlserver":
        container = _v2_container(cfg)
    container["securityContext"] = copy.deepcopy(SERVING_SECURITY)
    annotations = {f"mnistkit.io/{k.replace('_', '-')}": str(v) for k, v in cfg.provenance.items()}
    pod = {
        "containers": [container],
        "imagePullSecrets": [{"name": cfg.registry_secret}],
        "terminationGracePeriodSeconds": cfg.grace_seconds,
    }
    return {
        "apiVersion": f"machinelearning.seldon.io/{cfg.api_version}",
        "kind": "SeldonDeployment",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": _labels(cfg), "annotations": annotations},
        "spec": {
            "name": cfg.name,
            **({"protocol": "v2"} if cfg.server == "mlserver" else {}),
            "predictors": [
                {
                    "name": "default",
                    "replicas": cfg.replicas,
                    "labels": {"version": cfg.provenance.get("artifact_sha256", "unknown")[:12]},
                    "graph": {"name": "classifier", "type": "MODEL", "endpoint": {"type": "REST"}, "children": []},
                    "componentSpecs": [{"spec": pod}],
                }
            ],
        },
    }


def _build_step(cfg: ManifestConfig) -> dict[str, Any]:
    return {
        "image": cfg.tool_image,
        "args": [
            "{{workflow.parameters.source}}",
            "--image",
            "{{workflow.parameters.image}}:{{workflow.parameters.tag}}",
            "--builder",
            "{{workflow.parameters.builder}}",
            "--push",
            "--work-dir",
            "/build",
            "--wait-for-engine",
            "120",
            "--json",
            *(["--server", cfg.server] if cfg.server != "seldon" else []),
        ],
        # the sidecar's daemon, on the pod's own loopback: unreachable from outside the pod
        "env": [
            {"name": "DOCKER_HOST", "value": "tcp://127.0.0.1:2375"},
            {"name": "DOCKER_CONFIG", "value": "/docker-config"},
            # MNIST's test images: the ONNX export is checked against torch on all 10,000 of them
            {"name": "MNISTKIT_DATA_DIR", "value": "/data"},
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": "/data", "readOnly": True},
            {"name": "outputs", "mountPath": "/outputs", "readOnly": True},
            {"name": "build", "mountPath": "/build"},
            {"name": "docker-config", "mountPath": "/docker-config", "readOnly": True},
        ],
    }


def _dind_sidecar(cfg: ManifestConfig) -> dict[str, Any]:
    """The pod's own docker engine, reachable only on the pod's loopback."""
    return {
        "name": "dind",
        "image": cfg.dind_image,
        # "dockerd" first: the image's entrypoint then adds no listener of its own
        # (with a flag first it would also listen on 0.0.0.0:2375, the pod's IP)
        "args": ["dockerd", "--host=tcp://127.0.0.1:2375", "--tls=false"],
        "env": [{"name": "DOCKER_TLS_CERTDIR", "value": ""}],
        # the engine's storage: a volume, so its overlay2 driver works (k8s
        # ignores the image's VOLUME; on the container's own layer it falls back to vfs)
        "volumeMounts": [{"name": "docker-data", "mountPath": "/var/lib/docker"}],
        # a nested dockerd needs an unconfined sandbox; it is the pod's own daemon,
        # not the node's (a sandboxing runtime such as sysbox can drop this flag)
        "securityContext": {"privileged": True},
    }


def argo_workflow(cfg: ManifestConfig) -> dict[str, Any]:
    """Package and push in the cluster: mnistkit-build in the build-tool image, against a
    docker-in-docker sidecar in the same pod. The node's docker socket is never mounted, so
    the workflow cannot reach the node's engine, images or other containers."""
    ref = ImageRef.parse(cfg.image)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{cfg.name}-build-",
            "namespace": cfg.namespace,
            "labels": {"app.kubernetes.io/managed-by": "mnistkit"},
        },
        "spec": {
            "entrypoint": "build-and-push",
            "securityContext": {"fsGroup": FS_GROUP},
            "arguments": {
                "parameters": [
                    {"name": "source", "value": cfg.source_path},
                    {"name": "image", "value": ref.repository},
                    {"name": "tag", "value": cfg.provenance.get("artifact_sha256", "")[:12] or "latest"},
                    {"name": "builder", "value": cfg.builder_image},
                ]
            },
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": cfg.claims["data"], "readOnly": True}},
                {"name": "outputs", "persistentVolumeClaim": {"claimName": cfg.claims["outputs"], "readOnly": True}},
                {"name": "build", "persistentVolumeClaim": {"claimName": cfg.claims["build"]}},
                {"name": "docker-data", "emptyDir": {}},
                {
                    "name": "docker-config",
                    "secret": {
                        "secretName": cfg.registry_secret,
                        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    },
                },
            ],
            "templates": [
                {
                    "name": "build-and-push",
                    "container": _build_step(cfg),
                    "sidecars": [_dind_sidecar(cfg)],
                }
            ],
        },
    }


def pvcs(cfg: ManifestConfig) -> list[dict[str, Any]]:
    sizes = {"data": cfg.data_size, "outputs": cfg.outputs_size, "build": cfg.build_size}
    out = []
    for role, claim in cfg.claims.items():
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": sizes[role]}}}
        if cfg.storage_class:
            spec["storageClassName"] = cfg.storage_class
        out.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim,
                    "namespace": cfg.namespace,
                    "labels": {"app.kubernetes.io/managed-by": "mnistkit", "mnistkit.io/role": role},
                },
                "spec": spec,
            }
        )
    return out
