"""Write mnistkit/schemas/: the CRD schemas mnistkit validates against, trimmed to the
versions it uses and gzipped. A maintainer's tool, run by hand when a schema changes:

    python tools/trim_schemas.py CRD_FOLDER KUBERNETES_VALIDATE_SCHEMAS

CRD_FOLDER holds the upstream files named in mnistkit/schemas/README.md;
KUBERNETES_VALIDATE_SCHEMAS is kubernetes-validate's kubernetes-json-schema/v1.33.0-local-strict.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "mnistkit" / "schemas"
CRDS = {  # source file -> (output name, versions kept)
    "seldondeployment-crd-v1.17.1.yaml": ("seldondeployment-v1.17.1.json.gz", ("v1", "v1alpha2")),
    "argo-workflow-crd-v3.7.18.yaml": ("argo-workflow-v3.7.18.json.gz", ("v1alpha1",)),
    "kserve-inferenceservice-crd-v0.20.0.yaml": ("kserve-inferenceservice-v0.20.0.json.gz", ("v1beta1",)),
}


def write(name: str, doc: object) -> None:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    (OUT / name).write_bytes(gzip.compress(data, mtime=0))
    print(f"{name}: {len(data) / 1e6:.2f} MB -> {(OUT / name).stat().st_size / 1e3:.0f} kB")


def crd(src: Path, versions: tuple[str, ...]) -> dict:
    doc = yaml.load(src.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    kept = [{"name": v["name"], "schema": v["schema"]} for v in doc["spec"]["versions"] if v["name"] in versions]
    return {
        "apiVersion": doc["apiVersion"],
        "kind": doc["kind"],
        "metadata": {"name": doc["metadata"]["name"]},
        "spec": {"group": doc["spec"]["group"], "names": doc["spec"]["names"], "versions": kept},
    }


def pvc(k8s: Path) -> dict:
    """PersistentVolumeClaim (core/v1) with every definition it refers to, refs made local."""
    defs = json.loads((k8s / "_definitions.json").read_text())
    defs = defs.get("$defs") or defs.get("definitions")
    wanted, todo = {}, ["io.k8s.api.core.v1.PersistentVolumeClaim"]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = defs[name]
        text = json.dumps(defs[name])
        todo += [r.split("/")[-1] for r in _refs(text)]
    text = (
        json.dumps(wanted)
        .replace("/api/_definitions.json#/$defs/", "#/definitions/")
        .replace("#/$defs/", "#/definitions/")
    )
    return {"$ref": "#/definitions/io.k8s.api.core.v1.PersistentVolumeClaim", "definitions": json.loads(text)}


def _refs(text: str) -> list[str]:
    import re

    return re.findall(r'"\$ref": "([^"]+)"', text)


def main(crd_dir: str, k8s_dir: str) -> None:
    OUT.mkdir(exist_ok=True)
    for src, (name, versions) in CRDS.items():
        write(name, crd(Path(crd_dir) / src, versions))
    write(
        "seldondeployment-v0.2.3.json.gz", json.loads((Path(crd_dir) / "seldondeployment-crd-v0.2.3.json").read_text())
    )
    argo = json.loads((Path(crd_dir) / "argo-jsonschema-v3.7.18.json").read_text())
    write("argo-jsonschema-v3.7.18.json.gz", {"definitions": argo["definitions"]})
    write("persistentvolumeclaim-v1.33.json.gz", pvc(Path(k8s_dir)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
