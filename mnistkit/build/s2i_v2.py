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
import shutil
import tempfile
from pathlib import Path

from ..errors import PackagingError
from ..protocol_v2 import model_settings
from ..settings import settings
from .source import ModelSource
from .wheel import self_wheel

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
    existing non-empty ``dest`` is refused)."""
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackagingError(f"{out} already exists and is not empty; choose another folder")
    wheel = self_wheel(wheel_cache or Path(tempfile.gettempdir()) / "mnistkit-wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)
    try:
        (tmp / "model").mkdir()
        for name in ["manifest.json", *source.manifest["files"]]:
            shutil.copyfile(source.artifact / name, tmp / "model" / name)  # contents only, never a link
        limit = max_batch or settings().max_batch
        ms = model_settings(version=source.sha256[:12], max_batch=limit)
        (tmp / "model-settings.json").write_text(json.dumps(ms, indent=2) + "\n")
        (tmp / "wheels").mkdir()
        shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
        (tmp / "requirements.txt").write_text(
            "# exactly the mnistkit that built this image; its dependencies come with the builder image\n"
            f"./wheels/{wheel.name}\n"
        )
        (tmp / ".s2i").mkdir()
        (tmp / ".s2i" / "environment").write_text("".join(f"{k}={v}\n" for k, v in S2I_ENVIRONMENT_V2.items()))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
