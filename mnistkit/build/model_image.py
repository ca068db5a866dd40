"""One call: a trained run (or the best of a group) -> a model image, tested and pushed.

``build_model(BuildConfig(...))`` resolves the model, writes the s2i source folder,
builds by the s2i contract over the docker SDK (or the real ``s2i`` binary on request),
labels the image with its provenance, optionally smoke-tests it and pushes it. ``server``
picks what serves it: ``seldon`` (the v1 protocol, seldon-core-microservice) or
``mlserver`` (the Open Inference Protocol V2, for KServe and Seldon ``protocol: v2``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PackagingError
from ..files import disk_errors
from ..imageref import ImageRef
from ..local.dockerd import engine_errors
from .push import Credentials, check_registry, find_credentials, pull, push
from .s2i import image_labels, make_source_folder, s2i_binary_build, s2i_build
from .source import ModelSource, resolve_source
from .verify import smoke_test

__all__ = [
    "SERVERS",
    "RUNTIMES",
    "DEFAULT_RUNTIME",
    "BuildConfig",
    "BuildSummary",
    "build_model",
    "builder_kind",
    "default_image_name",
]

log = logging.getLogger(__name__)

#: what serves a model image -> the runtimes it has builders for (kind ``<server>-<runtime>``)
SERVERS = {"seldon": ("onnx", "torch"), "mlserver": ("onnx", "torch")}
#: what runs the network in an image: ONNX Runtime (model.onnx exported at build time, no torch) or torch
RUNTIMES = ("onnx", "torch")
DEFAULT_RUNTIME = "onnx"


def builder_kind(server: str, runtime: str | None) -> str:
    """The builder kind for ``server`` and ``runtime`` (None: the server's first, ONNX where it has it)."""
    runtimes = SERVERS[server]
    if runtime is not None and runtime not in runtimes:
        raise ConfigError(f"--runtime {runtime}: {server} images serve {' or '.join(runtimes)}")
    return f"{server}-{runtime or runtimes[0]}"


@dataclass(frozen=True)
class BuildConfig:
    source: str  # run folder, artifact folder, or search group folder
    image: str | None = None  # name:tag; default mnistkit/mnist:<artifact sha256[:12]>
    builder: str | None = None  # the s2i builder image; default mnistkit's, built when missing
    model_name: str = "MnistModel"
    source_only: str | None = None  # write the s2i source folder here and stop
    use_s2i: bool = False  # run the real s2i binary instead of the SDK path
    smoke_test: bool = False
    push: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    work_dir: str | None = None  # where the source folder and wheel cache go
    reuse: bool = False  # keep an existing image of the same model and builder instead of rebuilding
    server: str = "seldon"  # seldon (v1 protocol) or mlserver (V2)
    # onnx: model.onnx exported here, served by ONNX Runtime, no torch; torch: today's image.
    # None: what the builder serves (its io.mnistkit.builder.kind label), else the server's default
    runtime: str | None = None

    def validate(self) -> "BuildConfig":
        if self.server not in SERVERS:
            raise ConfigError(f"unknown server {self.server!r}; use one of {', '.join(SERVERS)}")
        if self.image is not None:
            ref = ImageRef.parse(self.image)
            if ref.digest:
                raise ConfigError(f"--image {self.image!r} names a digest; give a tag to build (NAME:TAG)")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise ConfigError(f"--runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        builder_kind(self.server, self.runtime)  # a runtime the server has no builder for
        if self.password is not None and not self.username:
            raise ConfigError("a password was given without --username")
        if self.push and self.image is None:
            raise ConfigError(
                "--push needs --image REGISTRY/NAME:TAG, where to push it (the default name, mnistkit/mnist:SHA, is a Docker Hub name)"
            )
        if self.source_only is not None:
            self._check_source_only()
        return self

    def _check_source_only(self) -> None:
        """--source-only writes a folder and builds nothing: what needs an image would go unheard."""
        if not self.source_only:
            raise ConfigError("--source-only is empty: name the folder to write the s2i source into")
        unused = [
            flag
            for flag, on in (("--smoke-test", self.smoke_test), ("--push", self.push), ("--use-s2i", self.use_s2i))
            if on
        ]
        if unused:
            raise ConfigError(f"--source-only builds no image, so {', '.join(unused)} cannot go with it")


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


def build_model(config: BuildConfig, client: Any = None, *, cache_dir: Path | None = None) -> BuildSummary:
    """Build (and optionally smoke-test and push) the Seldon image for ``config.source``.

    ``client`` is a docker client; ``None`` with ``source_only`` needs no engine.
    ``cache_dir`` keeps the builder's base image work and wheelhouse (default: MNISTKIT_HOME)."""
    config.validate()
    source = resolve_source(config.source)
    image = config.image or default_image_name(source)
    # an engine that goes away, or a full disk, is one PackagingError, never a traceback
    where = config.source_only or config.work_dir or tempfile.gettempdir()
    what = f"writing the s2i source folder {where}" if config.source_only else f"building {image} (in {where})"
    with disk_errors(PackagingError, what), engine_errors(what):
        return _build_model(config, client, cache_dir, source, image)


def _build_model(
    config: BuildConfig, client: Any, cache_dir: Path | None, source: ModelSource, image: str
) -> BuildSummary:
    work = Path(config.work_dir or tempfile.gettempdir())
    if config.source_only:
        runtime = builder_kind(config.server, config.runtime).rpartition("-")[2]
        folder = _complete_source_folder(replace(config, runtime=runtime), source, Path(config.source_only), work)
        log.info("wrote the s2i source folder %s", folder)
        return BuildSummary(image=image, source=str(folder), artifact_sha256=source.sha256)
    credentials: Credentials | None = None
    if config.push:  # fail on missing credentials before the build, not after
        credentials = find_credentials(ImageRef.parse(image), config.username, config.password)
    if client is None:
        raise ConfigError("building an image needs a docker engine")
    if config.push:  # a registry that is down or refuses the credentials: before the build
        check_registry(client, ImageRef.parse(image), credentials)
    if config.builder is None:
        from ..local.dockerd import mnistkit_home
        from .builder_image import ensure_image

        kind = builder_kind(config.server, config.runtime)
        builder = ensure_image(client, kind, cache_dir=cache_dir or mnistkit_home())
        config = replace(config, builder=builder, runtime=kind.rpartition("-")[2])
    assert config.builder is not None
    _have_builder(client, config)
    config = replace(config, runtime=_builder_runtime(client, config))
    assert config.builder is not None
    built = _reusable(client, image, source.sha256, config.builder) if config.reuse else None
    if built is not None:
        log.info("reusing %s: same model, same mnistkit, same builder", image)
    else:
        built = _build(config, client, source, image, work)
    return _verify_and_push(config, client, source, built, credentials)


def _build(config: BuildConfig, client: Any, source: ModelSource, image: str, work: Path) -> BuildSummary:
    builder = config.builder
    assert builder is not None
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="s2i-"))
    try:
        folder = _source_folder(config, source, tmp / "src", work)
        builder_id = _image_id(client, builder) or ""
        labels = image_labels(source, image, builder, _builder_digest(client, builder))
        labels["io.mnistkit.builder.id"] = builder_id
        labels.update(_add_runtime(config, folder))
        labels["io.mnistkit.server"] = config.server
        if config.server == "mlserver":
            labels["org.opencontainers.image.description"] = (
                "MNIST digit classifier served by MLServer, Open Inference Protocol V2 (mnistkit)"
            )
        if config.use_s2i:
            started = time.monotonic()
            s2i_binary_build(folder, image, builder)
            img = client.images.get(image)
            image_id, size, seconds = img.id, int(img.attrs.get("Size", 0)), time.monotonic() - started
            # the s2i binary sets its own labels, not mnistkit's: report what the image has
            # (without mnistkit's provenance labels, --reuse never matches such an image)
            labels = dict(img.labels or {})
            log.warning("built with the s2i binary: %s carries s2i's labels, not mnistkit's provenance labels", image)
        else:
            result = s2i_build(client, folder, image, builder=builder, labels=labels)
            image_id, size, seconds = result.image_id, result.size, result.seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s (%.0f MB) in %.1fs", image, size / 1e6, seconds)
    return BuildSummary(
        image=image, image_id=image_id, size=size, build_seconds=seconds, artifact_sha256=source.sha256, labels=labels
    )


def _add_runtime(config: BuildConfig, folder: Path) -> dict[str, str]:
    """Make the source folder's model ready for the runtime; return the image labels that say so.

    onnx: export ``model.onnx`` into the folder's copy of the model, parity-checked on all
    10,000 MNIST test images (``mnistkit.export``); the build fails when parity does not hold."""
    assert config.runtime is not None
    labels = {"io.mnistkit.runtime": config.runtime}
    if config.runtime == "onnx":
        from ..export import attach_onnx

        record = attach_onnx(folder / "model")
        parity = record["parity"]
        labels.update(
            {
                "io.mnistkit.onnx.sha256": record["sha256"],
                "io.mnistkit.onnx.opset": str(record["opset"]),
                "io.mnistkit.onnx.parity.images": str(parity["images"]),
                "io.mnistkit.onnx.parity.max_abs_diff": f"{parity['max_abs_diff']:.3e}",
                "io.mnistkit.onnx.parity.argmax_equal": str(parity["argmax_equal"]),
            }
        )
    return labels


def _builder_runtime(client: Any, config: BuildConfig) -> str:
    """The runtime to build for: the one asked for, checked against what the builder serves
    (mnistkit's builders say it in their ``io.mnistkit.builder.kind`` label), else the builder's."""
    import docker

    assert config.builder is not None
    try:
        kind = str((client.images.get(config.builder).labels or {}).get("io.mnistkit.builder.kind", ""))
    except docker.errors.ImageNotFound:
        kind = ""  # the build says what to do
    server, _, serves = kind.partition("-")
    if server not in SERVERS or serves not in RUNTIMES:
        serves = ""  # not one of mnistkit's builders: it serves what it is asked to
    if config.runtime and serves and config.runtime != serves:
        raise ConfigError(
            f"--runtime {config.runtime}: the builder {config.builder} serves {serves}; "
            f"use --runtime {serves} or a {config.server}-{config.runtime} builder"
        )
    return config.runtime or serves or builder_kind(config.server, None).rpartition("-")[2]


def _complete_source_folder(config: BuildConfig, source: ModelSource, dest: Path, work: Path) -> Path:
    """The source folder with its runtime's files (the ONNX export), made beside ``dest`` and
    renamed to it once complete: a failed export, or Ctrl-C, leaves no half-made ``dest``."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PackagingError(f"{dest} already exists and is not empty; choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.staging-"))
    try:
        folder = _source_folder(config, source, staging / "src", work)
        _add_runtime(config, folder)
        if dest.exists():
            dest.rmdir()
        folder.replace(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _source_folder(config: BuildConfig, source: ModelSource, dest: Path, work: Path) -> Path:
    if config.server == "mlserver":
        from .s2i_v2 import make_v2_source_folder

        return make_v2_source_folder(source, dest, wheel_cache=work / "wheels")
    return make_source_folder(source, dest, model_name=config.model_name, wheel_cache=work / "wheels")


def _have_builder(client: Any, config: BuildConfig) -> None:
    """Pull the builder from its registry when it is not here (the cluster's build step)."""
    assert config.builder is not None
    ref = ImageRef.parse(config.builder)
    if _image_id(client, config.builder) is not None:
        return
    if ref.registry is None:  # a local name: said now, not after the ONNX export and its parity check
        raise PackagingError(f"builder image {config.builder} not found; build it with 'mnistkit-build builder'")
    image = ImageRef.parse(config.image) if config.image else None
    explicit = (config.username, config.password) if image is not None and image.host == ref.host else (None, None)
    pull(client, ref, find_credentials(ref, *explicit))


def _image_id(client: Any, name: str) -> str | None:
    import docker

    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None


def _builder_digest(client: Any, builder: str) -> str:
    import docker

    try:
        return str((client.images.get(builder).labels or {}).get("io.mnistkit.builder.digest", ""))
    except docker.errors.ImageNotFound:
        return ""


def _reusable(client: Any, image: str, sha256: str, builder: str) -> BuildSummary | None:
    """The existing ``image`` if it holds the same model, built by the same mnistkit on the same builder."""
    import docker

    from .wheel import package_version

    try:
        img = client.images.get(image)
        base = client.images.get(builder)
    except docker.errors.ImageNotFound:
        return None
    labels = img.labels or {}
    same = (
        labels.get("io.mnistkit.artifact.sha256") == sha256
        and labels.get("io.mnistkit.builder.id") == base.id
        and labels.get("io.mnistkit.version") == package_version()
    )
    if not same:
        return None
    return BuildSummary(
        image=image,
        image_id=img.id,
        size=int(img.attrs.get("Size", 0)),
        build_seconds=0.0,
        artifact_sha256=sha256,
        labels=dict(labels),
    )


def _verify_and_push(
    config: BuildConfig, client: Any, source: ModelSource, built: BuildSummary, credentials: Credentials | None
) -> BuildSummary:
    smoke = None
    if config.smoke_test and config.server == "mlserver":
        from .verify_v2 import smoke_test_v2

        smoke = smoke_test_v2(client, built.image, source)
    elif config.smoke_test:
        smoke = smoke_test(client, built.image, source)
        log.info(
            "smoke test passed: %d digits, predictions equal the model's (max difference %.1e)",
            smoke["images"],
            smoke["max_abs_diff"],
        )
    if not config.push:
        return BuildSummary(**{**asdict(built), "smoke": smoke})
    started = time.monotonic()
    pushed = push(client, ImageRef.parse(built.image), credentials)
    return BuildSummary(
        **{
            **asdict(built),
            "smoke": smoke,
            "digest": pushed.digest,
            "reference": pushed.reference,
            "push_seconds": time.monotonic() - started,
        }
    )
