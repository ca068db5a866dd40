"""mnistkit-train: train the seed CNN on MNIST (the 2018 flags, same defaults)."""

from __future__ import annotations

import json

import click

from ._common import errors_to_exit, setup_logging, verbosity


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--batch-size", type=int, default=64, show_default=True, help="Training batch size.")
@click.option("--test-batch-size", type=int, default=1000, show_default=True, help="Evaluation batch size.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs to train.")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate (peak rate with --scheduler onecycle).")
@click.option("--momentum", type=float, default=0.5, show_default=True, help="SGD momentum.")
@click.option("--no-cuda", is_flag=True, help="Train on the CPU even when CUDA is available.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option("--log-interval", type=int, default=10, show_default=True, help="Batches between debug log lines (-v).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="MNISTKIT_DATA_DIR", help="Folder holding MNIST/raw/ [env MNISTKIT_DATA_DIR; default: the copy shipped in examples/data].")
@click.option("--download", is_flag=True, help="Download MNIST with torchvision when it is missing (needs network).")
@click.option("--output-dir", type=click.Path(file_okay=False), default="runs", show_default=True, help="Where run folders go.")
@click.option("--run-name", help="Name of the run folder (default: run-<time>-<random>).")
@click.option("--train-samples", type=int, help="Use only the first N training images (quick runs).")
@click.option("--test-samples", type=int, help="Evaluate on only the first N test images.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adadelta"]), default="sgd", show_default=True)
@click.option("--scheduler", type=click.Choice(["none", "step", "cosine", "onecycle"]), default="none", show_default=True, help="Learning-rate schedule.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="auto: bf16 autocast where the CPU has native bf16.")
@click.option("--threads", type=int, help="Torch threads (default: all cores).")
@click.option("--import-legacy", "legacy", type=click.Path(dir_okay=False), help="Instead of training, import a 2018 model.dat (state_dict) into a run folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity
@errors_to_exit
def main(legacy: str | None, as_json: bool, verbose: int, quiet: bool, **options: object) -> None:
    """Train the 2018 MNIST CNN on the real MNIST set and keep the best epoch's model.

    Each run gets a folder under --output-dir with config.json, metrics.jsonl, result.json
    and model/ (safetensors weights + manifest with checksums).
    """
    setup_logging(verbose, quiet)
    from ..train import TrainConfig, fit  # torch loads here, after --help

    config = TrainConfig(**options).validate()  # type: ignore[arg-type]
    if legacy:
        _import(legacy, config, as_json)
        return
    result = fit(config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(
            f"best accuracy {100 * result.best_accuracy:.2f}% (epoch {result.best_epoch}/{config.epochs}) "
            f"in {result.seconds:.1f}s\nmodel: {result.artifact} (sha256 {result.artifact_sha256[:12]})"
        )


def _import(legacy: str, config: "object", as_json: bool) -> None:
    from pathlib import Path

    from ..artifact import import_legacy

    name = getattr(config, "run_name") or f"imported-{Path(legacy).stem}"
    target = Path(getattr(config, "output_dir")) / name / "model"
    sha = import_legacy(legacy, target)
    if as_json:
        click.echo(json.dumps({"artifact": str(target), "artifact_sha256": sha}))
    else:
        click.echo(f"imported {legacy} -> {target} (sha256 {sha[:12]})")


if __name__ == "__main__":
    main()
