"""mnistkit: train many MNIST models, pick the best, package it as a Seldon image, push,
deploy and query — on a laptop today and on Kubernetes (Polyaxon, Argo, Seldon) tomorrow.

Heavy dependencies (torch, docker) are imported lazily: ``import mnistkit`` and
``mnistkit.client`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    ManifestError,
    MnistkitError,
    PackagingError,
    PipelineError,
    PushError,
    QueryError,
    SearchError,
    ServingError,
    TrainingError,
)

# public name -> module that defines it; loaded on first use
_LAZY = {
    "TrainConfig": "config",
    "Settings": "settings",
    "ImageRef": "imageref",
    "RunResult": "train",
    "fit": "train",
    "load_mnist": "data",
    "preprocess": "data",
    "Network": "network",
    "Model": "artifact",
    "load_model": "artifact",
    "save_artifact": "artifact",
    "import_legacy": "artifact",
}

__all__ = [
    "__version__",
    "MnistkitError",
    "ConfigError",
    "DataError",
    "TrainingError",
    "ArtifactError",
    "SearchError",
    "ServingError",
    "PackagingError",
    "PushError",
    "QueryError",
    "ManifestError",
    "PipelineError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mnistkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
