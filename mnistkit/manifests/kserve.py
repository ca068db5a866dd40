"""The KServe InferenceService for a V2 image, as plain data (validated in ``validate.py``).

``serving.kserve.io/v1beta1`` with a custom predictor: one container named
``kserve-container`` (KServe's name for it; the Service reads its port from the first
container), the image by digest, a restricted read-only security context, ``PROTOCOL=v2``
(a custom container has no ``protocolVersion`` field), port ``http1`` 8080 (the one name both the Standard and the
Knative deployment modes accept), HTTP probes on the V2 health routes (KServe would add
only a TCP probe) and two cores (KServe's default is one; the image runs two server
processes). The deployment mode is set explicitly: the cluster default differs between
installs, and it cannot change after creation. KServe adds no args or env to a custom
container, so the image's own command runs (``mnistkit.launch_v2``).
"""

from __future__ import annotations

import copy
from typing import Any

from .resources import SERVING_SECURITY, ManifestConfig

__all__ = ["HTTP_PORT", "METRICS_PORT", "inference_service", "kserve_host"]

HTTP_PORT = 8080  # KServe's default; MLServer's too (MLSERVER_HTTP_PORT)
METRICS_PORT = 8082  # MLServer's metrics port (MLSERVER_METRICS_PORT)


def kserve_host(cfg: ManifestConfig, domain: str = "example.com") -> str:
    """The Host KServe's ingress routes to this InferenceService (default ingress domain)."""
    if cfg.kserve_mode == "Knative":
        return f"{cfg.name}.{cfg.namespace}.{domain}"
    return f"{cfg.name}-{cfg.namespace}.{domain}"


def _container(cfg: ManifestConfig) -> dict[str, Any]:
    probe = {"port": HTTP_PORT}
    return {
        "name": "kserve-container",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "PROTOCOL", "value": "v2"},
            {"name": "MNISTKIT_PROCESSES", "value": str(cfg.workers)},
            {"name": "MNISTKIT_THREADS", "value": "1"},
        ],
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", **probe}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", **probe}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": str(max(1, cfg.workers)), "memory": cfg.memory},
            "limits": {"cpu": str(max(1, cfg.workers)), "memory": cfg.memory_limit},
        },
        "securityContext": copy.deepcopy(SERVING_SECURITY),
    }


def inference_service(cfg: ManifestConfig) -> dict[str, Any]:
    """An InferenceService serving the V2 image ``cfg.image`` (by digest when known)."""
    annotations = {
        "serving.kserve.io/deploymentMode": cfg.kserve_mode,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        **{f"mnistkit.io/{k.replace('_', '-')}": str(v) for k, v in cfg.provenance.items()},
    }
    labels = {"app.kubernetes.io/name": cfg.name, "app.kubernetes.io/managed-by": "mnistkit"}
    sha = cfg.provenance.get("artifact_sha256", "")
    if sha:
        labels["mnistkit.io/artifact"] = sha[:12]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "predictor": {
                "minReplicas": cfg.replicas,
                "containers": [_container(cfg)],
                "imagePullSecrets": [{"name": cfg.registry_secret}],
                "terminationGracePeriodSeconds": cfg.grace_seconds,
            }
        },
    }
