"""One call: a trained run (or the best of a group) -> a Seldon image, tested and pushed.

``build_model(BuildConfig(...))`` resolves the model, writes the s2i source folder,
builds by the s2i contract over the docker SDK (or the real ``s2i`` binary on request),
labels the image with its provenance, optionally smoke-tests it and pushes it.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .builder import BUILDER_IMAGE
from .errors import ConfigError
from .packaging import (ModelSource, image_labels, make_source_folder, resolve_source, s2i_binary_build, s2i_build,
                        smoke_test)
from .registry import Credentials, find_credentials, push

__all__ = ["BuildConfig", "BuildSummary", "build_model", "default_image_name"]

log = logging.getLogger(__name__)

# docker's reference grammar, without digests: [host[:port]/]path[:tag]
IMAGE_NAME = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
)


@dataclass(frozen=True)
class BuildConfig:
    source: str  # run folder, artifact folder, or search group folder
    image: str | None = None  # name:tag; default mnistkit/mnist:<artifact sha256[:12]>
    builder: str = BUILDER_IMAGE
    model_name: str = "MnistModel"
    source_only: str | None = None  # write the s2i source folder here and stop
    use_s2i: bool = False  # run the real s2i binary instead of the SDK path
    smoke_test: bool = False
    push: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    work_dir: str | None = None  # where the source folder and wheel cache go
    reuse: bool = False  # keep an existing image of the same model and builder instead of rebuilding

    def validate(self) -> "BuildConfig":
        if self.image is not None and not IMAGE_NAME.fullmatch(self.image):
            raise ConfigError(f"--image {self.image!r} is not a valid image name; use [REGISTRY/]NAME[:TAG] in lower case")
        if self.password is not None and not self.username:
            raise ConfigError("a password was given without --username")
        return self


@dataclass(frozen=True)
class BuildSummary:
    image: str
    source: str | None = None  # the s2i source folder, when kept
    image_id: str | None = None
    size: int | None = None
    build_seconds: float | None = None
    smoke: dict[str, Any] | None = None
    digest: str | None = None
    reference: str | None = None  # repository@sha256:..., once pushed
    push_seconds: float | None = None
    artifact_sha256: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_image_name(source: ModelSource) -> str:
    return f"mnistkit/mnist:{source.sha256[:12]}"


def build_model(config: BuildConfig, client: Any = None) -> BuildSummary:
    """Build (and optionally smoke-test and push) the Seldon image for ``config.source``.

    ``client`` is a docker client; ``None`` with ``source_only`` needs no engine."""
    config.validate()
    source = resolve_source(config.source)
    image = config.image or default_image_name(source)
    work = Path(config.work_dir or tempfile.gettempdir())
    wheel_cache = work / "wheels"
    if config.source_only:
        folder = make_source_folder(source, config.source_only, model_name=config.model_name, wheel_cache=wheel_cache)
        log.info("wrote the s2i source folder %s", folder)
        return BuildSummary(image=image, source=str(folder), artifact_sha256=source.sha256)
    credentials: Credentials | None = None
    if config.push:  # fail on missing credentials before the build, not after
        credentials = find_credentials(image.rpartition(":")[0] or image, config.username, config.password)
    if client is None:
        raise ConfigError("building an image needs a docker engine")
    existing = _reusable(client, image, source.sha256, config.builder) if config.reuse else None
    if existing is not None:
        log.info("reusing %s: same model and builder", image)
        result_id, size, seconds, labels = existing.id, int(existing.attrs.get("Size", 0)), 0.0, existing.labels
        return _finish(config, client, source, image, result_id, size, seconds, labels, credentials)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="s2i-"))
    try:
        folder = make_source_folder(source, tmp / "src", model_name=config.model_name, wheel_cache=wheel_cache)
        labels = image_labels(source, image, config.builder)
        builder_id = _image_id(client, config.builder)
        if builder_id:  # a missing builder is reported by the build itself, with what to do
            labels["io.mnistkit.builder.id"] = builder_id
        if config.use_s2i:
            started = time.monotonic()
            s2i_binary_build(folder, image, config.builder)
            img = client.images.get(image)
            result_id, size, seconds = img.id, int(img.attrs.get("Size", 0)), time.monotonic() - started
        else:
            result = s2i_build(client, folder, image, builder=config.builder, labels=labels)
            result_id, size, seconds = result.image_id, result.size, result.seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s (%.0f MB) in %.1fs", image, size / 1e6, seconds)
    return _finish(config, client, source, image, result_id, size, seconds, labels, credentials)


def _image_id(client: Any, name: str) -> str | None:
    import docker

    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None


def _reusable(client: Any, image: str, sha256: str, builder: str) -> Any:
    """The existing image ``image`` if it holds the same model built on the same builder."""
    import docker

    try:
        img = client.images.get(image)
        base = client.images.get(builder)
    except docker.errors.ImageNotFound:
        return None
    labels = img.labels or {}
    if labels.get("io.mnistkit.artifact.sha256") == sha256 and labels.get("io.mnistkit.builder.id") == base.id:
        return img
    return None


def _finish(config: BuildConfig, client: Any, source: ModelSource, image: str, result_id: str, size: int,
            seconds: float, labels: dict[str, str], credentials: Credentials | None) -> BuildSummary:
    smoke = None
    if config.smoke_test:
        smoke = smoke_test(client, image, source)
        log.info("smoke test passed: %d digits, predictions equal the model's (max difference %.1e)",
                 smoke["images"], smoke["max_abs_diff"])
    digest = reference = push_seconds = None
    if config.push:
        started = time.monotonic()
        pushed = push(client, image, credentials)
        digest, reference, push_seconds = pushed.digest, pushed.reference, time.monotonic() - started
    return BuildSummary(image=image, image_id=result_id, size=size, build_seconds=seconds, smoke=smoke, digest=digest,
                        reference=reference, push_seconds=push_seconds, artifact_sha256=source.sha256, labels=labels)
