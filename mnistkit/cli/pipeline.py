"""mnistkit-pipeline: the whole pipeline on this machine (what `make demo` runs)."""

from __future__ import annotations

import json

import click

from ._common import errors_to_exit, setup_logging, verbosity


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-f",
    "--file",
    "polyaxonfile",
    type=click.Path(dir_okay=False),
    help="The search to run (default examples/polyaxon/demo.yml).",
)
@click.option(
    "--work-dir",
    default="demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where runs/ and cluster/ go.",
)
@click.option("--train-samples", type=int, help="Cap on training images per trial (default: all 60,000).")
@click.option("--max-epochs", type=int, help="Cap on epochs per trial (default: the file's).")
@click.option("--concurrency", type=int, help="Trials at once (default: the file's).")
@click.option(
    "--registry-port",
    type=int,
    default=5000,
    show_default=True,
    help="Port of the local registry (another free one if taken).",
)
@click.option(
    "--docker-host", help="Docker engine URL (default $DOCKER_HOST, the machine's engine, or an embedded dockerd)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity
@errors_to_exit
def main(
    polyaxonfile: str | None,
    work_dir: str,
    train_samples: int | None,
    max_epochs: int | None,
    concurrency: int | None,
    registry_port: int,
    docker_host: str | None,
    as_json: bool,
    verbose: int,
    quiet: bool,
) -> None:
    """Search -> best model -> Seldon image (smoke-tested, pushed) -> run by digest ->
    query example digits -> cluster resources, with a local dockerd and registry."""
    setup_logging(verbose, quiet)
    from ..pipeline import PipelineConfig, run, summary_lines

    config = PipelineConfig(
        work_dir=work_dir,
        train_samples=train_samples,
        max_epochs=max_epochs,
        concurrency=concurrency,
        registry_port=registry_port,
        docker_host=docker_host,
    )
    if polyaxonfile:
        from dataclasses import replace

        config = replace(config, polyaxonfile=polyaxonfile)
    result = run(config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)


if __name__ == "__main__":
    main()
