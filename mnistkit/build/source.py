"""Which model to package: a run folder, a model folder (or its manifest), or a search
group folder (then its recorded best trial, checked against what was recorded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import read_manifest
from ..errors import ArtifactError, PackagingError

__all__ = ["ModelSource", "resolve_source"]


@dataclass(frozen=True)
class ModelSource:
    """A verified artifact and where it came from."""

    artifact: Path
    sha256: str
    manifest: dict[str, Any]
    group: str | None = None  # the search group it was chosen from, if any
    trial: str | None = None

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run", {}).get("id", ""))


def resolve_source(path: str | os.PathLike[str]) -> ModelSource:
    """A run folder, an artifact folder (or its manifest), or a search group folder."""
    from ..search import read_best

    p = Path(path)
    best: dict[str, Any] | None = None
    if (p / "best.json").is_file():
        best = read_best(p)
        p = Path(best["artifact"])
    try:
        manifest, sha, folder = read_manifest(p)
    except ArtifactError as e:
        raise PackagingError(str(e)) from None
    if best is None:
        return ModelSource(folder, sha, manifest)
    if sha != best["artifact_sha256"]:
        raise PackagingError(
            f"the best model of {path} changed since it was chosen (sha256 differs); re-run the search"
        )
    return ModelSource(folder, sha, manifest, Path(path).name, best["trial"])
