"""The s2i source folder of a V2 image (``mnistkit-build --server mlserver``).

What the V2 builder's ``assemble`` expects in ``<destination>/src``::

    model-settings.json   MLServer's: mnistkit.serving_v2.MnistRuntime, ./model, the tensors
    model/                the verified artifact (manifest + weights)
    wheels/               the wheel of the running mnistkit, installed by assemble
    requirements.txt      that wheel
    .s2i/environment      MNISTKIT_SERVER=mlserver

The same s2i contract (``s2i.s2i_build``) turns it into an image; torch is never imported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..protocol_v2 import model_settings
from ..settings import settings
from .s2i import write_source_folder
from .source import ModelSource

__all__ = ["S2I_ENVIRONMENT_V2", "make_v2_source_folder"]

S2I_ENVIRONMENT_V2 = {"MNISTKIT_SERVER": "mlserver"}


def make_v2_source_folder(
    source: ModelSource,
    dest: str | os.PathLike[str],
    *,
    max_batch: int | None = None,
    wheel_cache: Path | None = None,
) -> Path:
    """Write the V2 s2i source folder for ``source`` into ``dest`` (complete or absent; an
    existing non-empty ``dest`` is refused): ``model-settings.json`` beside ``model/``."""
    ms = model_settings(version=source.sha256[:12], max_batch=max_batch or settings().max_batch)
    return write_source_folder(
        source,
        dest,
        environment=S2I_ENVIRONMENT_V2,
        files={"model-settings.json": json.dumps(ms, indent=2) + "\n"},
        wheel_cache=wheel_cache,
    )
