"""Validation of cluster resources against the real schemas that ship in the package.

The CRDs' ``openAPIV3Schema`` with every object that lists ``properties`` treated as closed
(an API server prunes unknown fields silently, so a typo would pass), plus what the
schemas leave to admission webhooks (Seldon's ``graph.type`` enum, PVC access modes);
Argo's JSON schema too; and Kubernetes' own PersistentVolumeClaim schema, strict. The
files are in ``mnistkit/schemas`` (see its README for provenance).
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib.resources import files
from typing import Any

from ..errors import ManifestError

__all__ = [
    "GRAPH_TYPES",
    "schema",
    "closed",
    "validate_seldon",
    "validate_workflow",
    "validate_pvcs",
    "validate_inference_service",
]

GRAPH_TYPES = ("MODEL", "ROUTER", "COMBINER", "TRANSFORMER", "OUTPUT_TRANSFORMER")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Filesystem", "Block")


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """A schema file of ``mnistkit/schemas`` (gzipped JSON), parsed."""
    path = files("mnistkit") / "schemas" / name
    try:
        return json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError) as e:
        raise ManifestError(
            f"the schema {name} that ships with mnistkit cannot be read ({e}); reinstall mnistkit"
        ) from None


def closed(node: Any) -> Any:
    """Treat every object schema with properties as closed (no unknown fields)."""
    if isinstance(node, dict):
        out = {k: closed(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [closed(v) for v in node]
    return node


@functools.cache
def _crd_schema(name: str, version: str, close: bool = True) -> dict[str, Any]:
    spec = schema(name)["spec"]
    if "versions" in spec and any("schema" in v for v in spec["versions"]):
        match = [v for v in spec["versions"] if v["name"] == version]
        if not match:
            raise ManifestError(f"{name} has no version {version}")
        s = match[0]["schema"]["openAPIV3Schema"]
    else:
        s = spec["validation"]["openAPIV3Schema"]
    return closed(s) if close else s


def _errors(s: dict[str, Any], doc: dict[str, Any], what: str) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(s).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{what} is invalid at {where}: {e.message}{more}")


def _walk_graph(node: Any, where: str) -> None:
    if not isinstance(node, dict):
        return
    if node.get("type") not in GRAPH_TYPES:
        raise ManifestError(
            f"SeldonDeployment is invalid at {where}.type: {node.get('type')!r} is not one of {', '.join(GRAPH_TYPES)}"
        )
    for i, child in enumerate(node.get("children") or []):
        _walk_graph(child, f"{where}.children.{i}")


def validate_seldon(doc: dict[str, Any]) -> None:
    """Against the Seldon Core 1.17.1 CRD (closed objects) and the graph.type enum; a
    v1alpha2 document also against the 2018 (0.2.3) CRD."""
    version = str(doc.get("apiVersion", "")).rpartition("/")[2]
    if version not in ("v1", "v1alpha2"):
        raise ManifestError(
            f"SeldonDeployment apiVersion {doc.get('apiVersion')!r} is not machinelearning.seldon.io/v1 or v1alpha2"
        )
    _errors(_crd_schema("seldondeployment-v1.17.1.json.gz", version), doc, f"SeldonDeployment ({version})")
    if version == "v1alpha2":
        # the 2018 CRD describes only part of a predictor (no componentSpecs, no labels), so it
        # is applied open: it still enforces its enums (graph.type, endpoint.type) and types
        _errors(
            _crd_schema("seldondeployment-v0.2.3.json.gz", version, False),
            doc,
            "SeldonDeployment (v1alpha2, Seldon 0.2.3)",
        )
    for i, p in enumerate(doc.get("spec", {}).get("predictors", [])):
        _walk_graph(p.get("graph"), f"spec.predictors.{i}.graph")


@functools.cache
def _argo_json_schema() -> dict[str, Any]:
    return {
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow",
        "definitions": schema("argo-jsonschema-v3.7.18.json.gz")["definitions"],
    }


def validate_workflow(doc: dict[str, Any]) -> None:
    """Against the Argo 3.7.18 Workflow CRD (closed objects) and Argo's JSON schema."""
    _errors(_crd_schema("argo-workflow-v3.7.18.json.gz", "v1alpha1"), doc, "Workflow")
    _errors(_argo_json_schema(), doc, "Workflow (Argo JSON schema)")


#: what Knative's webhook accepts as a serving port name (k8s_validation.go validPortNames)
KNATIVE_PORT_NAMES = ("http1", "h2c", "")
#: env names Knative sets itself and refuses in a container
KNATIVE_RESERVED_ENV = ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")


def validate_inference_service(doc: dict[str, Any]) -> None:
    """Against the KServe 0.20 InferenceService CRD (``v1beta1``, closed objects), plus what
    the webhooks refuse and the schema does not say: a custom predictor's ``PROTOCOL`` must
    be v1 or v2, and (as Knative mode demands) one port named http1/h2c and no reserved env."""
    _errors(_crd_schema("kserve-inferenceservice-v0.20.0.json.gz", "v1beta1"), doc, "InferenceService")
    for i, c in enumerate(doc.get("spec", {}).get("predictor", {}).get("containers") or []):
        where = f"InferenceService is invalid at spec.predictor.containers.{i}"
        ports = c.get("ports") or []
        if len(ports) > 1 or any(p.get("name", "") not in KNATIVE_PORT_NAMES for p in ports):
            raise ManifestError(f"{where}.ports: one port named http1, h2c or nothing (Knative refuses others)")
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        reserved = [k for k in KNATIVE_RESERVED_ENV if k in env]
        if reserved:
            raise ManifestError(f"{where}.env: {reserved[0]} is set by Knative and may not be set")
        if env.get("PROTOCOL", "v1") not in ("v1", "v2"):
            raise ManifestError(f"{where}.env: PROTOCOL must be v1 or v2, got {env['PROTOCOL']!r}")


def validate_pvcs(docs: list[dict[str, Any]]) -> None:
    """Against Kubernetes 1.33's PersistentVolumeClaim schema (strict), plus the enums the
    API server enforces but the OpenAPI schema does not state."""
    s = schema("persistentvolumeclaim-v1.33.json.gz")
    for d in docs:
        spec = d.get("spec") or {}
        bad = [m for m in spec.get("accessModes") or [] if m not in ACCESS_MODES]
        if bad:
            raise ManifestError(
                f"PersistentVolumeClaim is invalid at spec.accessModes: {bad[0]!r} is not one of {', '.join(ACCESS_MODES)}"
            )
        if "volumeMode" in spec and spec["volumeMode"] not in VOLUME_MODES:
            raise ManifestError(
                f"PersistentVolumeClaim is invalid at spec.volumeMode: {spec['volumeMode']!r} is not one of {', '.join(VOLUME_MODES)}"
            )
        _errors(s, d, "PersistentVolumeClaim")
