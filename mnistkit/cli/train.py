"""mnistkit-train: train the seed CNN on MNIST (the 2018 flags, same defaults), or run a
polyaxonfile as a search group. The training options come from ``mnistkit.config.OPTIONS``."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from ..config import MACHINE, OPTIONS, PLACEMENT, RECIPES, TrainConfig
from ..errors import ConfigError
from ._common import errors_to_exit, given_on_command_line, setup_logging, table_options, verbosity

#: Options that say how to run a search, not how a trial trains.
_SEARCH_OWN = ("output_dir", "train_samples", "test_samples", "data_dir", "run_name")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@table_options(OPTIONS)
@click.option(
    "--recipe",
    type=click.Choice(sorted(RECIPES)) if RECIPES else str,
    help="Start from a named set of values (flags given beside it win): " + ", ".join(sorted(RECIPES)),
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(),
    help="Train again from a saved configuration: a run folder (its config.json) or a TrainConfig file. "
    "Flags given beside it change its values; the run goes to --output-dir under a new name unless "
    "--run-name is given, and reads MNIST from this machine's --data-dir.",
)
@click.option(
    "--import-legacy",
    "legacy",
    type=click.Path(dir_okay=False),
    help="Instead of training, import a 2018 model.dat (state_dict) into a run folder.",
)
@click.option(
    "-f",
    "--file",
    "polyaxonfile",
    type=click.Path(dir_okay=False),
    help="Run a polyaxonfile (2018 group/experiment or current operation) as a search group.",
)
@click.option("--concurrency", type=int, help="With -f: trials at once (default: the file's).")
@click.option("--group-name", help="With -f: name of the group folder (an existing one is resumed).")
@click.option("--metric", default="test_accuracy", show_default=True, help="With -f: metric that picks the best trial.")
@click.option(
    "--minimize/--maximize",
    default=None,
    help="With -f: the best trial has the lowest (highest) --metric. Default: the metric's own way, "
    "test_accuracy highest, test_loss lowest.",
)
@click.option("--max-epochs", type=int, help="With -f: cap every trial's epochs.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False),
    help="With -f: also write the search as a current polyaxonfile for a cluster.",
)
@click.option(
    "--image",
    help="With --export: the training image the cluster's trials run in, at your registry "
    "('mnistkit-build builder --train --registry REGISTRY --push' prints it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity
@errors_to_exit
def main(
    recipe: str | None,
    config_path: str | None,
    legacy: str | None,
    polyaxonfile: str | None,
    concurrency: int | None,
    group_name: str | None,
    metric: str,
    minimize: bool | None,
    max_epochs: int | None,
    export_path: str | None,
    image: str | None,
    as_json: bool,
    verbose: int,
    quiet: bool,
    **options: Any,
) -> None:
    """Train the 2018 MNIST CNN on the real MNIST set and keep the best epoch's model.

    Each run gets a folder under --output-dir with config.json, metrics.jsonl, result.json
    and model/ (safetensors weights + manifest with checksums).

    With -f FILE, run a Polyaxon hyper-parameter group here: each trial is a training run
    with the file's flags (training flags given here override the file's for every trial;
    --train-samples/--test-samples/--max-epochs cap them), and the best trial is recorded
    in the group folder's best.json for mnistkit-build.
    """
    setup_logging(verbose, quiet)
    _check_flags(polyaxonfile, export_path, config_path, recipe, legacy)
    base = _base(recipe, config_path)
    if polyaxonfile:
        _search(
            polyaxonfile,
            options,
            base,
            concurrency,
            group_name,
            metric,
            minimize,
            max_epochs,
            export_path,
            image,
            as_json,
        )
        return
    config = replace(TrainConfig(**options), **base).validate()
    if legacy:
        _import(legacy, config.output_dir, config.run_name, as_json)
        return
    _train(config, as_json)


def _export(spec: Any, path: str, image: str, overrides: dict[str, Any], config: Any) -> None:
    """The search the cluster runs whole: the training flags given here, not the local caps."""
    from ..polyaxonfile import write_v1

    write_v1(spec, path, image=image, extra_args=tuple(TrainConfig(**overrides).to_args(list(overrides))))
    local = (
        ("--train-samples", config.train_samples),
        ("--test-samples", config.test_samples),
        ("--max-epochs", config.max_epochs),
        ("--concurrency", config.concurrency),
    )
    capped = [flag for flag, value in local if value]
    click.echo(f"wrote {path}" + (f" (without the local {', '.join(capped)})" if capped else ""), err=True)


def _train(config: TrainConfig, as_json: bool) -> None:
    from ..train import fit, skip_final_collection  # torch loads here, after --help

    skip_final_collection()  # this process ends when the run does
    result = fit(config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(
            f"best accuracy {100 * result.best_accuracy:.2f}% (epoch {result.best_epoch}/{config.epochs}) "
            f"in {result.seconds:.1f}s\nmodel: {result.artifact} (sha256 {result.artifact_sha256[:12]})"
        )


#: the options that only mean something with -f (a search)
_SEARCH_ONLY = ("concurrency", "group_name", "metric", "minimize", "max_epochs", "export_path", "image")


def _base(recipe: str | None, config_path: str | None) -> dict[str, Any]:
    """The values a run starts from: a recipe's or a saved config's (less where it went), then
    the flags given on the command line."""
    options = click.get_current_context().params
    explicit = {n: options[n] for n in given_on_command_line(OPTIONS)}
    if config_path is not None:  # where it ran (folders, data) stays this machine's
        saved = TrainConfig.load(config_path).to_json()
        return {**{n: v for n, v in saved.items() if n not in MACHINE}, **explicit}
    return {**RECIPES.get(recipe or "", {}), **explicit}


def _check_flags(
    polyaxonfile: str | None, export_path: str | None, config_path: str | None, recipe: str | None, legacy: str | None
) -> None:
    """Flags that would be ignored without a word, or fight each other. --config holds every
    training value: a recipe, a search or an import beside it would fight it."""
    _check_search_flags(polyaxonfile, export_path)
    if config_path is not None:
        other = "--recipe" if recipe else "-f" if polyaxonfile else "--import-legacy" if legacy else None
        if other:
            raise ConfigError(f"--config and {other} cannot be used together: give flags beside --config to change it")
    if legacy is not None:  # an import trains nothing: training flags beside it would go unheard
        training = [o.flag for n, o in OPTIONS.items() if n in given_on_command_line(OPTIONS) and n not in PLACEMENT]
        other = "-f" if polyaxonfile else "--recipe" if recipe else ", ".join(training)
        if other:
            raise ConfigError(
                f"--import-legacy imports a trained model as it is; {other} cannot go with it "
                "(only --output-dir and --run-name do)"
            )


def _check_search_flags(polyaxonfile: str | None, export_path: str | None) -> None:
    """Flags that would be ignored without a word: the search's without -f, --image without --export."""
    search_only = given_on_command_line(_SEARCH_ONLY)
    if search_only and not polyaxonfile:
        flags = ", ".join("--" + n.replace("_path", "").replace("_", "-") for n in search_only)
        raise ConfigError(
            f"{flags} only appl{'ies' if len(search_only) == 1 else 'y'} to a search: add -f POLYAXONFILE"
        )
    if polyaxonfile and given_on_command_line(["run_name"]):  # trials are named trial-NNN
        raise ConfigError("--run-name names one training run; name a search's folder with --group-name")
    if "image" in search_only and not export_path:
        raise ConfigError("--image names the image of the exported polyaxonfile's trials: add --export FILE")
    if export_path and "image" not in search_only:  # (it defaulted to a Docker Hub name nobody pushes)
        raise ConfigError(
            "--export needs --image: the training image the cluster's trials run in; "
            "'mnistkit-build builder --train --registry REGISTRY --push' builds, pushes and prints it"
        )


def _search(
    path: str,
    options: dict[str, Any],
    base: dict[str, Any],
    concurrency: int | None,
    group_name: str | None,
    metric: str,
    minimize: bool | None,
    max_epochs: int | None,
    export_path: str | None,
    image: str | None,
    as_json: bool,
) -> None:
    from ..polyaxonfile import read_polyaxonfile
    from ..search import SearchConfig, check_overrides, run_group

    spec = read_polyaxonfile(path)
    overrides = {k: v for k, v in base.items() if k not in _SEARCH_OWN}
    check_overrides(spec, overrides)  # before --export writes anything
    config = SearchConfig(
        output_dir=options["output_dir"],
        group_name=group_name,
        concurrency=concurrency,
        metric=metric,
        maximize=None if minimize is None else not minimize,
        train_samples=options["train_samples"],
        test_samples=options["test_samples"],
        max_epochs=max_epochs,
        data_dir=options["data_dir"],
        overrides=overrides,
    ).validate()
    if export_path and image:
        _export(spec, export_path, image, overrides, config)
    result = run_group(spec, config)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "group_dir": str(result.group_dir),
                    "best": asdict(result.best) if result.best else None,
                    "trials": [asdict(t) for t in result.trials],
                    "seconds": result.seconds,
                },
                indent=2,
                default=str,
            )
        )
        return
    _print_group(result, metric)


def _print_group(result: Any, metric: str) -> None:
    keys = sorted({k for t in result.trials for k in t.params if k in _varying(result.trials)})
    click.echo(
        f"{'trial':<10} {'status':<8} "
        + " ".join(f"{k:>12}" for k in keys)
        + f" {'accuracy':>9} {'loss':>8} {'seconds':>8}"
    )
    for t in result.trials:
        acc, loss = t.metrics.get("test_accuracy"), t.metrics.get("test_loss")
        vals = " ".join(f"{_fmt(t.params[k]):>12}" for k in keys)
        click.echo(
            f"{t.name:<10} {t.status:<8} {vals} {'' if acc is None else f'{100 * acc:.2f}%':>9} "
            f"{'' if loss is None else f'{loss:.4f}':>8} {'' if t.duration is None else f'{t.duration:.1f}':>8}"
            + (f"  {t.error}" if t.error else "")
            + ("  (reused)" if t.reused else "")
        )
    best = result.best
    assert best is not None
    if result.reused:
        click.echo(f"reused {result.reused} of {len(result.trials)} trials (finished with the same configuration)")
    click.echo(f"best: {best.name} ({metric} {best.metrics.get(metric)}) -> {result.group_dir / 'best.json'}")


def _varying(trials: list[Any]) -> set[str]:
    keys = {k for t in trials for k in t.params}
    return {k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1} or keys


def _fmt(v: object) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def _import(legacy: str, output_dir: str, run_name: str | None, as_json: bool) -> None:
    from ..artifact import import_legacy

    run_dir = Path(output_dir) / (run_name or f"imported-{Path(legacy).stem}")
    if run_dir.exists() or run_dir.is_symlink():  # as training refuses it: never replace a run's model
        raise ConfigError(f"run folder {run_dir} already exists; choose another --run-name or remove it")
    target = run_dir / "model"
    sha = import_legacy(legacy, target)
    if as_json:
        click.echo(json.dumps({"artifact": str(target), "artifact_sha256": sha}))
    else:
        click.echo(f"imported {legacy} -> {target} (sha256 {sha[:12]})")


if __name__ == "__main__":
    main()
