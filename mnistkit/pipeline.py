"""The whole pipeline on one machine, as one call: ``mnistkit.pipeline.run(PipelineConfig())``.

1. services   — a docker engine (the user's if one answers, else an embedded dockerd) and a
                local registry with credentials, both under ``home``;
2. search     — a short hyper-parameter group on real MNIST; the best trial is chosen;
3. build      — the best model as a Seldon image (mnistkit's builder), smoke-tested, pushed;
4. serve      — the pushed image run by digest and queried with example digits;
5. manifests  — the cluster resources for that image;
then a summary. It is idempotent (finished trials, images and layers are reused) and stops
what it started when a step fails or the user presses Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, MnistkitError, PipelineError
from .files import os_reason

if TYPE_CHECKING:
    from .polyaxonfile import SearchSpec

__all__ = ["PipelineConfig", "PipelineResult", "run", "summary_lines"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    polyaxonfile: str = "examples/polyaxon/demo.yml"  # relative to the working directory, like the data
    work_dir: str = "demo"  # runs/, cluster/ go here
    home: str | None = None  # embedded services' state (default $MNISTKIT_HOME or ~/.mnistkit)
    train_samples: int | None = None  # caps for quick runs; the demo trains on all of MNIST
    test_samples: int | None = None
    max_epochs: int | None = None
    concurrency: int | None = None
    registry_port: int = 5000
    username: str = "mnistkit"
    repository: str = "mnistkit/mnist"
    images: tuple[str, ...] = ()  # digits to query; default the example digits that ship with mnistkit
    docker_host: str | None = None

    def validate(self) -> "PipelineConfig":
        if not 0 <= self.registry_port <= 65535:
            raise ConfigError(f"--registry-port must be 0..65535 (0: any free port), got {self.registry_port}")
        for name in ("train_samples", "test_samples", "max_epochs", "concurrency"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        return self


@dataclass
class PipelineResult:
    best: dict[str, Any] = field(default_factory=dict)
    image: str = ""
    reference: str = ""
    size: int = 0
    predictions: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    engine: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Steps:
    def __init__(self, result: PipelineResult, on_step: Callable[[str], None] | None) -> None:
        self.result, self.on_step = result, on_step

    def __call__(self, name: str) -> "_Step":
        return _Step(self, name)


class _Step:
    def __init__(self, steps: _Steps, name: str) -> None:
        self.steps, self.name = steps, name

    def __enter__(self) -> None:
        if self.steps.on_step:
            self.steps.on_step(self.name)
        log.info("== %s", self.name)
        self.t0 = time.monotonic()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.steps.result.steps[self.name] = round(time.monotonic() - self.t0, 1)
        if exc is None or isinstance(exc, (KeyboardInterrupt, PipelineError)):
            return
        if isinstance(exc, MnistkitError):
            raise PipelineError(self.name, str(exc)) from None
        from .local.dockerd import engine_failure

        reason = engine_failure(exc)  # before OSError: requests' errors are OSErrors too
        if reason is None and isinstance(exc, OSError):
            reason = f"{exc.filename + ': ' if exc.filename else ''}{os_reason(exc)}"
        if reason is not None:
            raise PipelineError(self.name, reason) from None


def _password(home: Path) -> str:
    """The demo registry's password, made once: written whole to a private file and then linked
    into place, so two demos starting at once agree on it, and a kill or a full disk mid-write
    leaves no empty password behind (every later run then failed as "no credentials")."""
    path = home / "registry" / "password"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (value := path.read_text().strip()):
        return value
    value = secrets.token_urlsafe(18)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".password-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        if path.exists():  # empty: damaged, so replaced
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):  # another demo made it first: use theirs
                os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path.read_text().strip()


def run(config: PipelineConfig | None = None, *, on_step: Callable[[str], None] | None = None) -> PipelineResult:
    """Run the whole pipeline; raises ``PipelineError`` naming the failed step."""
    from .local.dockerd import mnistkit_home
    from .polyaxonfile import read_polyaxonfile

    config = (config or PipelineConfig()).validate()
    try:  # the search's file is read before any service starts: a typo costs nothing
        spec = read_polyaxonfile(config.polyaxonfile)
    except MnistkitError as e:
        default = config.polyaxonfile == PipelineConfig.polyaxonfile and not Path(config.polyaxonfile).exists()
        hint = (
            "; run it in mnistkit's repository (the default file is relative to it), or pass -f FILE" if default else ""
        )
        raise PipelineError("search", f"{e}{hint}") from None
    home = Path(config.home) if config.home else mnistkit_home()
    result = PipelineResult()
    step = _Steps(result, on_step)
    with ExitStack() as cleanup:
        with step("services"):
            client, registry, password = _services(config, home, result, cleanup)
        with step("search"):
            group_dir = _search(config, spec, result)
        with step("build"):
            _build(config, client, registry.address, password, group_dir, home, result)
        with step("serve"):
            _serve(config, client, password, result, cleanup)
        with step("manifests"):
            from .manifests import manifests_for

            written = manifests_for(group_dir, Path(config.work_dir) / "cluster", image=result.reference)
            result.files["cluster"] = str(written[0].parent)
    return result


def _services(config: PipelineConfig, home: Path, result: PipelineResult, cleanup: ExitStack) -> tuple[Any, Any, str]:
    from .local._proc import free_port, port_free
    from .local.dockerd import connect_docker
    from .local.registry import LocalRegistry, stop_orphans

    client, embedded = connect_docker(config.docker_host, home=home)
    if embedded:
        cleanup.callback(embedded.stop)
        result.engine = f"embedded dockerd ({embedded.socket})"
    else:
        result.engine = f"existing docker engine ({client.api.base_url})"
    log.info("docker: %s", result.engine)
    stop_orphans(home / "registry")  # one a killed demo left holds the port this demo would take
    port = config.registry_port if config.registry_port and port_free(config.registry_port) else free_port()
    password = _password(home)
    registry = LocalRegistry(home / "registry", port, config.username, password).start()
    cleanup.callback(registry.stop)
    log.info(
        "registry: %s (user %s, password in %s)", registry.address, config.username, home / "registry" / "password"
    )
    return client, registry, password


def _search(config: PipelineConfig, spec: "SearchSpec", result: PipelineResult) -> Path:
    from .search import SearchConfig, read_best, run_group

    group = run_group(
        spec,
        SearchConfig(
            output_dir=str(Path(config.work_dir) / "runs"),
            group_name=spec.name,
            concurrency=config.concurrency,
            train_samples=config.train_samples,
            test_samples=config.test_samples,
            max_epochs=config.max_epochs,
        ),
    )
    best = read_best(group.group_dir)
    result.best = {k: best.get(k) for k in ("trial", "params", "caps", "metrics", "artifact_sha256")}
    result.files["group"] = str(group.group_dir)
    return group.group_dir


def _build(
    config: PipelineConfig,
    client: Any,
    registry: str,
    password: str,
    group_dir: Path,
    home: Path,
    result: PipelineResult,
) -> None:
    from .build.model_image import BuildConfig, build_model
    from .imageref import ImageRef

    image = ImageRef.parse(f"{registry}/{config.repository}").with_tag(result.best["artifact_sha256"][:12])
    summary = build_model(
        BuildConfig(
            source=str(group_dir),
            image=str(image),
            smoke_test=True,
            push=True,
            username=config.username,
            password=password,
            work_dir=str(home / "work"),
            reuse=True,
        ),
        client,
        cache_dir=home,
    )
    result.image, result.reference, result.size = summary.image, summary.reference or "", summary.size or 0


def _serve(config: PipelineConfig, client: Any, password: str, result: PipelineResult, cleanup: ExitStack) -> None:
    from .build.verify import digit_labels, example_digits, serve_image
    from .client import Endpoint, QueryConfig, load_inputs, predict

    client.images.pull(result.reference, auth_config={"username": config.username, "password": password})
    container, url = serve_image(client, result.reference)
    cleanup.callback(container.remove, force=True)
    files = list(config.images) or example_digits()
    labels = digit_labels()
    preds = predict(load_inputs(files), QueryConfig(Endpoint(url=f"{url}/api/v1.0/predictions")))
    result.predictions = [
        {
            "image": Path(p.name).name,
            "digit": p.digit,
            "probability": round(p.probability, 4),
            "label": labels.get(Path(p.name).name),
        }
        for p in preds
    ]


def summary_lines(r: PipelineResult) -> Iterator[str]:
    """The human summary printed at the end of the demo."""
    m = r.best.get("metrics", {})
    params = ", ".join(f"{k}={v}" for k, v in r.best.get("params", {}).items())
    if r.best.get("caps"):  # a quick run: the file's values, capped by the command line
        params += "; capped: " + ", ".join(f"{k}={v}" for k, v in r.best["caps"].items())
    yield f"best trial   {r.best.get('trial')}: accuracy {100 * m.get('test_accuracy', 0):.2f}% ({params})"
    yield f"image        {r.reference}  ({r.size / 1e6:.0f} MB)"
    yield f"engine       {r.engine}"
    right = sum(p["digit"] == p["label"] for p in r.predictions if p["label"] is not None)
    yield f"predictions  {right}/{len(r.predictions)} example digits right:"
    for p in r.predictions:
        mark = "" if p["label"] is None else ("  ok" if p["digit"] == p["label"] else f"  (label {p['label']})")
        yield f"  {p['image']:<22} -> {p['digit']}  p={p['probability']:.3f}{mark}"
    yield f"files        runs: {r.files.get('group')}   cluster resources: {r.files.get('cluster')}"
    yield (
        "timings      "
        + ", ".join(f"{k} {v:.1f}s" for k, v in r.steps.items())
        + f"  (total {sum(r.steps.values()):.1f}s)"
    )
