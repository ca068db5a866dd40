"""Cluster resources for the pipeline past one machine, checked before they are written.

``manifests_for(source, out_dir, image=...)`` writes, for a run or a search group and its
image: the SeldonDeployment, the Argo Workflow, the PVCs (``resources.py``) and the search
as a current polyaxonfile, each validated against the real schemas (``validate.py``) and
the polyaxonfile by the real ``polyaxon check``. For a V2 image (``server="mlserver"``) the
SeldonDeployment says ``protocol: v2`` and a KServe InferenceService (``kserve.py``) is
written too. Nothing is written unless every file validates.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ManifestError
from ..files import disk_errors
from ..imageref import ImageRef
from .kserve import inference_service
from .resources import ManifestConfig, argo_workflow, pvcs, seldon_deployment
from .validate import validate_inference_service, validate_pvcs, validate_seldon, validate_workflow

__all__ = ["ManifestConfig", "manifests_for", "write_manifests", "polyaxon_check", "cluster_images"]


def write_manifests(
    out_dir: str | os.PathLike[str],
    cfg: ManifestConfig,
    *,
    polyaxonfile: Callable[[Path], Any] | None = None,
    validate: bool = True,
) -> list[Path]:
    """Validate every resource, then write them all into ``out_dir`` (or nothing at all).

    ``polyaxonfile`` is a callable writing the search's polyaxonfile to a given path."""
    cfg.validate()
    resources = {
        "seldondeployment.yaml": [seldon_deployment(cfg)],
        "argo-workflow.yaml": [argo_workflow(cfg)],
        "pvcs.yaml": pvcs(cfg),
    }
    if cfg.server == "mlserver":
        resources["inferenceservice.yaml"] = [inference_service(cfg)]
    if validate:
        validate_seldon(resources["seldondeployment.yaml"][0])
        validate_workflow(resources["argo-workflow.yaml"][0])
        validate_pvcs(resources["pvcs.yaml"])
        if "inferenceservice.yaml" in resources:
            validate_inference_service(resources["inferenceservice.yaml"][0])
    out = Path(out_dir)
    with disk_errors(ManifestError, f"cannot write the cluster resources into {out}"):
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
            for stale in RESOURCE_FILES - set(resources):  # `kubectl apply -f DIR` must not find an old one
                (out / stale).unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


#: the resource files ``write_manifests`` may write: one a run does not write is removed from the folder
RESOURCE_FILES = frozenset({"seldondeployment.yaml", "argo-workflow.yaml", "pvcs.yaml", "inferenceservice.yaml"})


def polyaxon_check(path: Path) -> None:
    """The real ``polyaxon check -f`` on a polyaxonfile (the polyaxon client must be installed)."""
    from ..local._proc import find_exe

    exe = find_exe(
        "polyaxon", "pip install 'mnistkit[polyaxon]' to check the polyaxonfile, or pass --no-validate", ManifestError
    )
    proc = subprocess.run([exe, "check", "-f", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
        detail = next(
            (x for x in lines if "valid" in x.lower() and "version" not in x.lower()), lines[-1] if lines else "?"
        )
        raise ManifestError(f"polyaxonfile is invalid: {detail}")


def cluster_images(registry: str | None, server: str = "seldon") -> dict[str, str]:
    """The builder (for ``server``), build-tool and training images as mnistkit tags them, at ``registry``."""
    from ..build.builder_image import KINDS, image_tag
    from ..imageref import parse_registry

    if not registry:  # Docker Hub's account "mnistkit", which is not ours, would be pulled from
        raise ManifestError(
            "the builder, build-tool and training images need a registry the cluster pulls from: pass "
            "--registry HOST[:PORT] (or give --image at that registry); without one they would name Docker Hub's "
            "account 'mnistkit'"
        )
    prefix = f"{parse_registry(registry)}/"
    return {
        "builder_image": prefix + image_tag(KINDS[f"{server}-onnx"]),  # the lean default; the tool exports ONNX
        "tool_image": prefix + image_tag(KINDS["tool"]),
        "train_image": prefix + image_tag(KINDS["train"]),
    }


def manifests_for(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    image: str,
    registry: str | None = None,
    validate: bool = True,
    server: str = "seldon",
    **options: Any,
) -> list[Path]:
    """Write the cluster resources for a run or search group and its image (by digest when
    known): SeldonDeployment, Argo Workflow, polyaxonfile, PVCs, and for a V2 image
    (``server="mlserver"``) the KServe InferenceService. The other images are named at
    ``registry`` (default: the model image's). Nothing is written unless every resource
    validates."""
    from ..build.source import resolve_source
    from ..build.wheel import package_version
    from ..polyaxonfile import write_v1

    src = resolve_source(source)
    m = src.manifest
    provenance = {
        "artifact_sha256": src.sha256,
        "run_id": src.run_id,
        "mnistkit_version": package_version(),
        "test_accuracy": str(m.get("metrics", {}).get("test_accuracy", "")),
    }
    if src.group:
        provenance.update(group=src.group, trial=src.trial or "")
    name = Path(source).resolve().name
    images = {**cluster_images(registry if registry is not None else ImageRef.parse(image).registry, server), **options}
    cfg = ManifestConfig(
        image=image, provenance=provenance, source_path=f"/outputs/{name}", server=server, **images
    ).validate()
    spec, flags = _search_of(source, src, cfg.name)

    def polyaxonfile(path: Path) -> None:
        write_v1(
            spec,
            path,
            image=cfg.train_image,
            extra_args=(*flags, "--data-dir=/data"),
            volumes=((cfg.claims["data"], "/data", True), (cfg.claims["outputs"], "/outputs", False)),
            output_dir=f"/outputs/{spec.name}",
            run_name="{{ globals.uuid }}",
        )
        if validate:
            polyaxon_check(path)

    return write_manifests(out_dir, cfg, polyaxonfile=polyaxonfile, validate=validate)


def _search_of(source: str | os.PathLike[str], src: Any, name: str) -> tuple[Any, tuple[str, ...]]:
    """The search that made the model, and the flags every trial gets besides the search's own:
    the group's search with the training flags given beside its file (not its caps on samples and
    epochs, which were for the run here), or one trial of the run's config (every training option
    it ran with)."""
    import json

    from ..config import TrainConfig
    from ..polyaxonfile import SearchSpec
    from ..search import TRIAL_OPTIONS, spec_from_group

    if src.group:
        spec = spec_from_group(source)
        try:  # the caps (--train-samples, --max-epochs) were for the run here: the cluster runs it whole
            given = json.loads((Path(source) / "group.json").read_text())["config"]["overrides"]
            overrides = {k: v for k, v in given.items() if k in TRIAL_OPTIONS}
            flags = TrainConfig.from_json(overrides).to_args(list(overrides))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ManifestError(
                f"{source}/group.json is damaged or from another mnistkit version; rerun the search"
            ) from None
        return spec, tuple(flags)
    saved = src.manifest.get("train_config", {})
    tc = TrainConfig.from_json({k: v for k, v in saved.items() if k in TRIAL_OPTIONS})
    return SearchSpec("single", args=tuple(tc.to_args()), name=name), ()
