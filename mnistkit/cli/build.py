"""mnistkit-build: package a trained model as a Seldon image (s2i contract, docker SDK),
push it, and build the builder images."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from ._common import errors_to_exit, given_on_command_line, setup_logging, verbosity

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DefaultGroup(click.Group):
    """``mnistkit-build SOURCE ...`` means ``mnistkit-build image SOURCE ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["image", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings=CONTEXT)
def main() -> None:
    """Package a trained model as a Seldon Core image (v1) or an MLServer image (V2), push it, write cluster resources.

    \b
      mnistkit-build SOURCE --image NAME:TAG [--smoke-test] [--push]
      mnistkit-build builder [--server mlserver]   build mnistkit's s2i builder image (v1 or V2)
      mnistkit-build prune                remove builders older mnistkit code made, and untagged images
      mnistkit-build manifests SOURCE     write SeldonDeployment, Argo Workflow, polyaxonfile, PVCs
                                          (--server mlserver: V2, plus a KServe InferenceService)

    SOURCE is a run folder, a model folder, or a search group folder (its best trial).
    """


def _engine(docker_host: str | None, wait: float = 0) -> tuple[Any, Any]:
    from ..local.dockerd import connect_docker

    return connect_docker(docker_host, wait=wait)


@main.command("image", context_settings=CONTEXT)
@click.argument("source", type=click.Path())
@click.option("--image", help="Image NAME:TAG (default mnistkit/mnist:<artifact sha256[:12]>).")
@click.option("--builder", help="s2i builder image (default: mnistkit's, built here when missing).")
@click.option(
    "--server",
    type=click.Choice(["seldon", "mlserver"]),
    default="seldon",
    show_default=True,
    help="What serves the image: seldon (seldon-core-microservice, v1 protocol) or mlserver (MLServer, V2 "
    "protocol, for KServe and Seldon protocol: v2).",
)
@click.option("--model-name", default="MnistModel", show_default=True, help="MODEL_NAME of the Seldon component.")
@click.option(
    "--source-only",
    type=click.Path(),
    help="Only write the s2i source folder to this path (for the real s2i elsewhere).",
)
@click.option("--use-s2i", is_flag=True, help="Build with the s2i binary on PATH instead of the docker SDK.")
@click.option(
    "--smoke-test/--no-smoke-test",
    default=False,
    show_default=True,
    help="Run the image and compare its predictions with the model's.",
)
@click.option(
    "--runtime",
    type=click.Choice(["onnx", "torch"]),
    help="onnx: export model.onnx (parity-checked on MNIST's test set) and serve it with ONNX Runtime, no torch "
    "in the image; torch: serve the safetensors weights with torch. Default: what --builder serves, else onnx.",
)
@click.option("--push", is_flag=True, help="Push the image to its registry.")
@click.option(
    "--username",
    help="Registry user (with --password-stdin); default: MNISTKIT_REGISTRY_USERNAME/PASSWORD, else the docker config file.",
)
@click.option("--password-stdin", is_flag=True, help="Read the registry password from standard input.")
@click.option(
    "--docker-host", help="Docker engine URL (default $DOCKER_HOST, the machine's engine, or an embedded dockerd)."
)
@click.option(
    "--wait-for-engine",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to wait for DOCKER_HOST to answer (a sidecar engine starts beside the build).",
)
@click.option("--work-dir", type=click.Path(file_okay=False), help="Where temporary build files go.")
@click.option(
    "--manifests",
    "manifests_dir",
    type=click.Path(file_okay=False),
    help="Also write the cluster resources for the image (by digest once pushed) here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@verbosity
@errors_to_exit
def image_cmd(
    source: str,
    docker_host: str | None,
    wait_for_engine: float,
    password_stdin: bool,
    work_dir: str | None,
    manifests_dir: str | None,
    as_json: bool,
    verbose: int,
    quiet: bool,
    **options: Any,
) -> None:
    """Build the Seldon image for SOURCE by the s2i contract; optionally smoke-test and push it."""
    setup_logging(verbose, quiet)
    from ..build.model_image import BuildConfig, build_model
    from ..errors import ConfigError
    from ..local.dockerd import mnistkit_home

    if not (math.isfinite(wait_for_engine) and 0 <= wait_for_engine <= 86400):
        raise ConfigError(f"--wait-for-engine must be 0 .. 86400 seconds (got {wait_for_engine})")
    if manifests_dir is not None and options.get("source_only") is not None:
        raise ConfigError(
            "--source-only builds no image, so --manifests cannot go with it (use mnistkit-build manifests)"
        )
    password = _read_password() if password_stdin else None
    home = mnistkit_home()
    config = BuildConfig(
        source=source, password=password, work_dir=work_dir or str(home / "work"), **options
    ).validate()
    if config.source_only:
        summary = build_model(config)
    else:
        client, embedded = _engine(docker_host, wait_for_engine)
        try:
            summary = build_model(config, client, cache_dir=home)
        finally:
            if embedded:
                embedded.stop()
    written = []
    if manifests_dir and not summary.source:
        from ..manifests import manifests_for

        image = summary.reference or summary.image
        written = [str(p) for p in manifests_for(source, manifests_dir, image=image, server=config.server)]
    if as_json:
        click.echo(json.dumps({**summary.to_json(), "manifests": written}, indent=2))
    else:
        _print_summary(summary, written)


def _print_summary(summary: Any, written: list[str]) -> None:
    if summary.source:
        click.echo(f"s2i source folder: {summary.source}")
        return
    click.echo(f"image {summary.image} ({(summary.size or 0) / 1e6:.0f} MB) built in {summary.build_seconds:.1f}s")
    if summary.smoke:
        click.echo(
            f"smoke test: {summary.smoke['images']} digits, same predictions as the model "
            f"(max difference {summary.smoke['max_abs_diff']:.1e})"
        )
    if summary.reference:
        click.echo(f"pushed {summary.reference}")
    if written:
        click.echo(f"cluster resources: {', '.join(written)}")


def _manifest_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--name", default="mnist", show_default=True, help="SeldonDeployment name (also prefixes the PVCs)."
            ),
            click.option("--namespace", default="seldon", show_default=True),
            click.option("--replicas", type=int, default=1, show_default=True),
            click.option(
                "--api-version",
                type=click.Choice(["v1", "v1alpha2"]),
                default="v1",
                show_default=True,
                help="SeldonDeployment version (v1alpha2 for clusters of the 2018 era).",
            ),
            click.option(
                "--registry-secret",
                default="regcred",
                show_default=True,
                help="docker-config Secret for pulls and the Argo push.",
            ),
            click.option(
                "--registry",
                help="Registry of the builder, build-tool and training images (default: the model image's).",
            ),
            click.option("--storage-class", help="storageClassName of the PVCs (default: the cluster's)."),
            click.option(
                "--server",
                type=click.Choice(["seldon", "mlserver"]),
                default="seldon",
                show_default=True,
                help="What the image serves with; mlserver (V2) adds a KServe InferenceService and "
                "sets the SeldonDeployment's protocol: v2.",
            ),
            click.option(
                "--kserve-mode",
                type=click.Choice(["Standard", "Knative"]),
                default="Standard",
                show_default=True,
                help="The InferenceService's deployment mode (with --server mlserver).",
            ),
        ]
    ):
        f = option(f)
    return f


@main.command("manifests", context_settings=CONTEXT)
@click.argument("source", type=click.Path())
@click.option("--image", required=True, help="The model image: REPOSITORY@sha256:DIGEST (best) or REPOSITORY:TAG.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="cluster",
    show_default=True,
    help="Folder for the YAML files.",
)
@_manifest_options
@click.option("--no-validate", is_flag=True, help="Skip validation against the schemas (not recommended).")
@verbosity
@errors_to_exit
def manifests_cmd(
    source: str,
    image: str,
    out_dir: str,
    no_validate: bool,
    registry: str | None,
    verbose: int,
    quiet: bool,
    **options: Any,
) -> None:
    """Write SeldonDeployment, Argo Workflow, polyaxonfile and PVCs for SOURCE's model (and, with
    --server mlserver, a KServe InferenceService), each checked against the real schemas before
    anything is written."""
    setup_logging(verbose, quiet)
    from ..errors import ConfigError
    from ..manifests import manifests_for

    if given_on_command_line(["kserve_mode"]) and options.get("server") != "mlserver":
        raise ConfigError("--kserve-mode shapes the KServe InferenceService, written only with --server mlserver")
    for path in manifests_for(source, out_dir, image=image, registry=registry, validate=not no_validate, **options):
        click.echo(str(path))


@main.command("builder", context_settings=CONTEXT)
@click.option(
    "--kind",
    "kind_name",
    type=click.Choice(["seldon-onnx", "seldon-torch", "mlserver-onnx", "mlserver-torch", "tool", "train"]),
    default="seldon-onnx",
    show_default=True,
    help="Which image: an s2i builder (v1 or V2, on ONNX Runtime or torch), the build tool (the Argo step) "
    "or the training image.",
)
@click.option(
    "--server",
    type=click.Choice(["seldon", "mlserver"]),
    help="The s2i builder for this server: seldon (v1 protocol) or mlserver (V2); sets --kind (with --runtime).",
)
@click.option(
    "--runtime",
    type=click.Choice(["onnx", "torch"]),
    help="With --server: the builder for this runtime (default: onnx for both servers).",
)
@click.option("--tool", is_flag=True, help="Same as --kind tool.")
@click.option("--train", is_flag=True, help="Same as --kind train.")
@click.option("--rebuild", is_flag=True, help="Rebuild even when the image exists.")
@click.option("--registry", help="Also tag the image at this registry (HOST[:PORT]), under the same name.")
@click.option("--push", is_flag=True, help="Push it there (needs --registry); credentials as for model images.")
@click.option("--username", help="Registry user (with --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from standard input.")
@click.option(
    "--docker-host", help="Docker engine URL (default $DOCKER_HOST, the machine's engine, or an embedded dockerd)."
)
@verbosity
@errors_to_exit
def builder_cmd(
    kind_name: str,
    server: str | None,
    runtime: str | None,
    tool: bool,
    train: bool,
    rebuild: bool,
    registry: str | None,
    push: bool,
    username: str | None,
    password_stdin: bool,
    docker_host: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Build one of mnistkit's images offline (Debian base by debootstrap, wheelhouse on loopback).

    The image is tagged by a digest of what goes into it, so it is rebuilt exactly when its
    inputs change. With --registry and --push it goes where the cluster files name it."""
    setup_logging(verbose, quiet)
    from ..build.builder_image import provide_image
    from ..errors import ConfigError
    from ..local.dockerd import mnistkit_home

    if push and not registry:
        raise ConfigError("--push needs --registry HOST[:PORT]")
    if registry:
        from ..imageref import parse_registry

        parse_registry(registry)  # before the build: a Hub account where a registry was meant
    given = {
        "--kind": bool(given_on_command_line(["kind_name"])),
        "--tool": tool,
        "--train": train,
        "--server": bool(server),
    }
    chosen = [flag for flag, on in given.items() if on]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} each choose the image; give one")
    if runtime and not server:
        raise ConfigError("--runtime goes with --server (or name the builder with --kind, e.g. seldon-torch)")
    if server:
        from ..build.model_image import builder_kind

        kind_name = builder_kind(server, runtime)
    kind = "tool" if tool else "train" if train else kind_name
    password = _read_password() if password_stdin else None
    home = mnistkit_home()
    client, embedded = _engine(docker_host)
    try:
        built, size = provide_image(client, kind, cache_dir=home, rebuild=rebuild)
        where = _to_registry(client, built, registry, push, username, password) if registry else ""
    finally:
        if embedded:
            embedded.stop()
    click.echo(f"{built} ({size / 1e6:.0f} MB){where}")


@main.command("prune", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Only list the tags that would be removed.")
@click.option(
    "--docker-host", help="Docker engine URL (default $DOCKER_HOST, the machine's engine, or an embedded dockerd)."
)
@verbosity
@errors_to_exit
def prune_cmd(dry_run: bool, docker_host: str | None, verbose: int, quiet: bool) -> None:
    """Remove mnistkit's builder, tool and training images that this version would not build
    (made from older Dockerfiles, requirements or code), then the engine's untagged images.

    Model images, base images and other images are kept."""
    setup_logging(verbose, quiet)
    from ..build.builder_image import prune_images

    client, embedded = _engine(docker_host)
    try:
        removed, reclaimed = prune_images(client, dry_run=dry_run)
    finally:
        if embedded:
            embedded.stop()
    for tag in removed:
        click.echo(("would remove " if dry_run else "removed ") + tag)
    if dry_run:
        click.echo(f"{len(removed)} image(s) would be removed, up to {reclaimed / 1e6:.0f} MB")
    else:
        click.echo(f"{len(removed)} image tag(s) removed, {reclaimed / 1e6:.0f} MB reclaimed")


def _read_password() -> str:
    """The first line of standard input (--password-stdin), which must not be empty."""
    from ..errors import ConfigError

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError(
            '--password-stdin read an empty password; pipe it in, e.g. echo "$PASSWORD" | mnistkit-build ...'
        )
    return password


def _to_registry(client: Any, built: str, registry: str, push: bool, username: str | None, password: str | None) -> str:
    """Tag ``built`` at ``registry`` under the same name, and push it there when asked."""
    from ..build.push import find_credentials, publish
    from ..imageref import ImageRef, parse_registry
    from ..local.dockerd import engine_errors

    target = ImageRef(parse_registry(registry), ImageRef.parse(built).path, ImageRef.parse(built).tag)
    if push:
        return f" -> {publish(client, built, registry, find_credentials(target, username, password)).reference}"
    with engine_errors(f"tagging {target}"):
        client.images.get(built).tag(target.repository, target.tag_or_latest)
    return f" tagged {target}"


if __name__ == "__main__":
    main()
