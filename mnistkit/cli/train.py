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
@click.option("-f", "--file", "polyaxonfile", type=click.Path(dir_okay=False), help="Run a polyaxonfile (2018 group/experiment or current operation) as a search group.")
@click.option("--concurrency", type=int, help="With -f: trials at once (default: the file's).")
@click.option("--group-name", help="With -f: name of the group folder (an existing one is resumed).")
@click.option("--metric", default="test_accuracy", show_default=True, help="With -f: metric that picks the best trial.")
@click.option("--minimize", is_flag=True, help="With -f: the best trial has the lowest --metric (e.g. test_loss).")
@click.option("--max-epochs", type=int, help="With -f: cap every trial's epochs.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), help="With -f: also write the search as a current polyaxonfile for a cluster.")
@click.option("--image", default="localhost:5000/mnistkit/builder:latest", show_default=True, help="With --export: the image the cluster's trials run in.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity
@errors_to_exit
def main(legacy: str | None, polyaxonfile: str | None, concurrency: int | None, group_name: str | None, metric: str,
         minimize: bool, max_epochs: int | None, export_path: str | None, image: str,
         as_json: bool, verbose: int, quiet: bool, **options: object) -> None:
    """Train the 2018 MNIST CNN on the real MNIST set and keep the best epoch's model.

    Each run gets a folder under --output-dir with config.json, metrics.jsonl, result.json
    and model/ (safetensors weights + manifest with checksums).

    With -f FILE, run a Polyaxon hyper-parameter group here: each trial is a training run
    with the file's flags (training flags given here override the file's for every trial;
    --train-samples/--test-samples/--max-epochs cap them), and the best trial is recorded
    in the group folder's best.json for mnistkit-build.
    """
    setup_logging(verbose, quiet)
    if polyaxonfile:
        ctx = click.get_current_context()
        explicit = [n for n in options if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        _search(polyaxonfile, options, explicit, concurrency, group_name, metric, minimize, max_epochs,
                export_path, image, as_json)
        return
    from ..train import TrainConfig, fit  # torch loads here, after --help

    config = TrainConfig(**options).validate()  # type: ignore[arg-type]
    if legacy:
        _import(legacy, config.output_dir, config.run_name, as_json)
        return
    result = fit(config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(
            f"best accuracy {100 * result.best_accuracy:.2f}% (epoch {result.best_epoch}/{config.epochs}) "
            f"in {result.seconds:.1f}s\nmodel: {result.artifact} (sha256 {result.artifact_sha256[:12]})"
        )


_SEARCH_OWN = {"output_dir", "train_samples", "test_samples", "data_dir", "run_name"}


def _search(path: str, options: dict[str, object], explicit: list[str], concurrency: int | None,
            group_name: str | None, metric: str, minimize: bool, max_epochs: int | None,
            export_path: str | None, image: str, as_json: bool) -> None:
    from ..polyaxonfile import read_polyaxonfile, write_v1
    from ..search import SearchConfig, run_group

    spec = read_polyaxonfile(path)
    extra = []
    for name in explicit:
        if name in _SEARCH_OWN:
            continue
        value = options[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                extra.append(flag)
        else:
            extra.append(f"{flag}={value}")
    config = SearchConfig(
        output_dir=str(options["output_dir"]), group_name=group_name, concurrency=concurrency, metric=metric,
        maximize=not minimize, train_samples=options["train_samples"], test_samples=options["test_samples"],  # type: ignore[arg-type]
        max_epochs=max_epochs, data_dir=options["data_dir"], extra_args=tuple(extra),  # type: ignore[arg-type]
    ).validate()
    if export_path:
        caps = tuple(extra) + tuple(
            f"--{k.replace('_', '-')}={v}" for k, v in (("train_samples", config.train_samples), ("test_samples", config.test_samples)) if v
        )
        write_v1(spec, export_path, image=image, extra_args=caps)
        click.echo(f"wrote {export_path}", err=True)
    result = run_group(spec, config)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({"group_dir": str(result.group_dir), "best": asdict(result.best) if result.best else None,
                               "trials": [asdict(t) for t in result.trials], "seconds": result.seconds}, indent=2, default=str))
        return
    keys = sorted({k for t in result.trials for k in t.params if k in _varying(result.trials)})
    head = f"{'trial':<10} {'status':<8} " + " ".join(f"{k:>12}" for k in keys) + f" {'accuracy':>9} {'loss':>8} {'seconds':>8}"
    click.echo(head)
    for t in result.trials:
        acc = t.metrics.get("test_accuracy")
        loss = t.metrics.get("test_loss")
        vals = " ".join(f"{_fmt(t.params[k]):>12}" for k in keys)
        click.echo(f"{t.name:<10} {t.status:<8} {vals} {'' if acc is None else f'{100 * acc:.2f}%':>9} "
                   f"{'' if loss is None else f'{loss:.4f}':>8} {'' if t.duration is None else f'{t.duration:.1f}':>8}"
                   + (f"  {t.error}" if t.error else ""))
    best = result.best
    assert best is not None
    click.echo(f"best: {best.name} ({metric} {best.metrics.get(metric)}) -> {result.group_dir / 'best.json'}")


def _varying(trials: list) -> set[str]:  # type: ignore[type-arg]
    keys = {k for t in trials for k in t.params}
    return {k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1} or keys


def _fmt(v: object) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def _import(legacy: str, output_dir: str, run_name: str | None, as_json: bool) -> None:
    from pathlib import Path

    from ..artifact import import_legacy

    target = Path(output_dir) / (run_name or f"imported-{Path(legacy).stem}") / "model"
    sha = import_legacy(legacy, target)
    if as_json:
        click.echo(json.dumps({"artifact": str(target), "artifact_sha256": sha}))
    else:
        click.echo(f"imported {legacy} -> {target} (sha256 {sha[:12]})")


if __name__ == "__main__":
    main()
