"""Hyper-parameter groups: the 2018 polyaxonfile and the current format, run for real
(size-capped), plus the export checked by the real `polyaxon check`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mnistkit.cli.train import main as train_main
from mnistkit.errors import SearchError
from mnistkit.polyaxonfile import MAX_TRIALS, parse_polyaxonfile, read_polyaxonfile, write_v1
from mnistkit.search import SearchConfig, plan_trials, read_best, run_group, spec_from_group
from support import REPO

SEED_FILE = REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml"
CAPS = dict(train_samples=600, test_samples=500, max_epochs=1)


def seed_doc():
    return yaml.safe_load(SEED_FILE.read_text())


def polyaxon_check(path):
    exe = shutil.which("polyaxon") or os.path.join(os.path.dirname(sys.executable), "polyaxon")
    return subprocess.run([exe, "check", "-f", str(path)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def seed_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("groups")
    return run_group(
        read_polyaxonfile(SEED_FILE), SearchConfig(output_dir=str(out), group_name="seed", concurrency=2, **CAPS)
    )


def test_the_2018_file_runs_ten_trials_from_its_space(seed_group):
    trials = seed_group.trials
    assert len(trials) == 10 and all(t.status == "done" for t in trials)
    grid = np.linspace(0.001, 0.1, 5)
    assert all(np.isclose(grid, t.params["lr"]).any() for t in trials)
    assert all(0.5 <= t.params["momentum"] <= 0.6 for t in trials)
    assert all(t.params["batch_size_train"] == 128 for t in trials)
    # each trial ran mnistkit's training with the file's flags and the caps
    config = json.loads((seed_group.group_dir / "trials" / "trial-000" / "config.json").read_text())["config"]
    assert config["batch_size"] == 128 and config["test_batch_size"] == 1000 and config["epochs"] == 1
    assert config["lr"] == trials[0].params["lr"] and config["train_samples"] == 600


def test_concurrency_is_respected(seed_group):
    spans = [(t.started, t.ended) for t in seed_group.trials]
    for start, _ in spans:
        alive = sum(s <= start < e for s, e in spans)
        assert alive <= 2
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) == 2  # it did run two at once


def test_best_is_the_argmax_and_recorded(seed_group):
    best = read_best(seed_group.group_dir)
    accs = {t.name: t.metrics["test_accuracy"] for t in seed_group.trials}
    assert best["value"] == max(accs.values()) and accs[best["trial"]] == best["value"]
    from mnistkit.artifact import load_model

    assert load_model(best["artifact"]).sha256 == best["artifact_sha256"]
    assert best["caps"] == CAPS  # params are the file's; these say what the command line capped
    rows = json.loads((seed_group.group_dir / "trials.json").read_text())
    assert [r["trial"] for r in rows] == [f"trial-{i:03d}" for i in range(10)]
    csv_lines = (seed_group.group_dir / "trials.csv").read_text().splitlines()
    assert csv_lines[0].startswith("trial,status") and len(csv_lines) == 11


def test_a_loss_picks_the_trial_with_the_lowest_loss_unless_told_otherwise(seed_group, tmp_path):
    """--metric test_loss alone used to pick the highest loss (maximize was the default for every
    metric), the worst trial, and mnistkit-build packaged it. The finished trials are reused."""
    shutil.copytree(seed_group.group_dir, tmp_path / "seed")
    config = SearchConfig(output_dir=str(tmp_path), group_name="seed", concurrency=2, metric="test_loss", **CAPS)
    result = run_group(read_polyaxonfile(SEED_FILE), config)
    losses = {t.name: t.metrics["test_loss"] for t in result.trials}
    assert result.reused == len(result.trials) == 10  # nothing trained again
    best = read_best(result.group_dir)
    assert best["optimization"] == "minimize" and best["value"] == min(losses.values()) == losses[best["trial"]]
    asked = run_group(read_polyaxonfile(SEED_FILE), replace(config, maximize=True))  # said outright: as asked
    assert read_best(asked.group_dir)["value"] == max(losses.values())


def test_sampling_is_reproducible_and_follows_the_seed():
    spec = read_polyaxonfile(SEED_FILE)
    assert plan_trials(spec, seed=5) == plan_trials(spec, seed=5)
    assert plan_trials(spec, seed=5) != plan_trials(spec, seed=6)


def test_grid_is_the_full_product():
    doc = seed_doc()
    del doc["hptuning"]["random_search"]
    doc["hptuning"]["grid_search"] = None
    doc["hptuning"]["matrix"] = {
        "lr": {"values": [0.01, 0.1]},
        "momentum": {"linspace": "0.5:0.9:3"},
        "batch_size_train": {"range": [32, 129, 32]},
    }
    plans = plan_trials(parse_polyaxonfile(doc))
    assert len(plans) == 2 * 3 * 4
    assert {(p["lr"], p["momentum"], p["batch_size_train"]) for p in plans} == {
        (a, b, c) for a in (0.01, 0.1) for b in (0.5, 0.7, 0.9) for c in (32, 64, 96, 128)
    }


@pytest.mark.parametrize(
    "kind, value, check",
    [
        ("linspace", "0.001:0.1:5", lambda v: np.isclose(np.linspace(0.001, 0.1, 5), v).any()),
        ("logspace", "-3:-1:3", lambda v: np.isclose([1e-3, 1e-2, 1e-1], v).any()),
        ("geomspace", [1, 8, 4], lambda v: np.isclose([1, 2, 4, 8], v).any()),
        ("quniform", "0:1:0.25", lambda v: v in (0, 0.25, 0.5, 0.75)),
        ("loguniform", "-3:0", lambda v: np.exp(-3) <= v <= 1),  # Polyaxon: exp of a uniform draw
        ("normal", "0:1", lambda v: -10 < v < 10),
        ("lognormal", {"loc": 0, "scale": 0.5}, lambda v: v > 0),
        ("pvalues", [[1, 0.5], [2, 0.5]], lambda v: v in (1, 2)),
    ],
)
def test_distributions(kind, value, check):
    doc = seed_doc()
    doc["hptuning"]["matrix"]["lr"] = {kind: value}
    doc["hptuning"]["random_search"]["n_experiments"] = 25
    values = [p["lr"] for p in plan_trials(parse_polyaxonfile(doc))]
    assert all(check(v) for v in values), values


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["hptuning"]["matrix"].update(lr={"zipf": "1:2"}), "unknown distribution 'zipf'"),
        (
            lambda d: d["hptuning"].update(grid_search=None) or d["hptuning"].pop("random_search"),
            "momentum: uniform is continuous",
        ),
        (lambda d: d.update(hptunning=d.pop("hptuning")), "unknown key hptunning"),
        (lambda d: d["hptuning"]["matrix"].update(lr={"linspace": "0.1:0.001:5"}), "needs start < stop"),
        (lambda d: d["hptuning"]["matrix"].update(lr={"linspace": "0.1:x:5"}), "'x' is not a number"),
        (lambda d: d["hptuning"]["random_search"].pop("n_experiments"), "n_experiments is required"),
        (lambda d: d["run"].update(cmd="python run.py --lr={{ lrr }}"), "{{ lrr }} but nothing declares it"),
        (lambda d: d["hptuning"].update(hyperband={}), "hyperband search is not supported"),
    ],
)
def test_malformed_files_are_clear_errors(mutate, message):
    doc = seed_doc()
    mutate(doc)
    with pytest.raises(SearchError, match=message.replace("{", "\\{").replace("}", "\\}")):
        parse_polyaxonfile(doc)


def v1_doc() -> dict:
    return {
        "version": 1.1,
        "kind": "operation",
        "name": "mnist",
        "matrix": {"kind": "random", "numRuns": 2, "params": {"lr": {"kind": "choice", "value": [0.05, 0.1]}}},
        "component": {
            "kind": "component",
            "inputs": [{"name": "lr", "type": "float"}],
            "run": {"kind": "job", "container": {"command": ["mnistkit-train"], "args": ["--lr={{ lr }}"]}},
        },
    }


def _container(d):
    return d["component"]["run"]["container"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(name="/tmp/elsewhere"), "name '/tmp/elsewhere' must be letters, digits"),
        (lambda d: d.update(name="../../outside"), "name '../../outside' must be letters, digits"),
        (lambda d: d.update(name=7), "name 7 must be letters, digits"),
        (lambda d: d["matrix"].update(concurrency="two"), "matrix.concurrency: 'two' is not a number"),
        (lambda d: d["matrix"].update(numRuns="x"), "matrix.numRuns: 'x' is not a number"),
        (lambda d: d["matrix"].update(numRuns=2.5), "matrix.numRuns: 2.5 is not a whole number"),
        (lambda d: d["matrix"].update(numRuns=float("inf")), "matrix.numRuns: inf is not a whole number"),
        (lambda d: d["matrix"].update(seed="abc"), "matrix.seed: 'abc' is not a number"),
        (lambda d: d["matrix"].update(seed=-1), "matrix.seed: the seed must be 0 or more"),
        (lambda d: d.update(matrix=["grid"]), "matrix must be a mapping, not list"),
        (lambda d: d["matrix"].update(params=[{"lr": 1}]), "matrix.params must be a mapping, not list"),
        (lambda d: d.update(params=[1]), "params must be a mapping, not list"),
        (
            lambda d: d["component"].update(inputs=[{"type": "float"}]),
            "component.inputs[0] must be a mapping with a name",
        ),
        (lambda d: _container(d).update(command="mnistkit-train"), "command must be a list, e.g. [mnistkit-train]"),
        (lambda d: _container(d).update(args="--lr={{ lr }}"), "args must be a list"),
        (
            lambda d: d["matrix"].update(earlyStopping=[{"metric": "loss", "value": 0.1}]),
            "metric 'loss' is not recorded",
        ),
        (lambda d: d["matrix"].update(earlyStopping={"metric": "x"}), "matrix.earlyStopping must be a list"),
        (lambda d: d["matrix"]["params"].update(m={"kind": "geomspace", "value": "0:1:3"}), "neither 0"),
        (lambda d: d["matrix"]["params"].update(m={"kind": "range", "value": "0:1000000:1"}), "gives 1000000 values"),
        (lambda d: d["matrix"]["params"].update(m={"kind": "logspace", "value": "0:3:4:-2"}), "positive base"),
        (lambda d: d["matrix"].update(numRuns=1_000_000_000), "has 1,000,000,000 trials; at most 10,000"),
        (lambda d: _container(d).update(args=["--epochs=1"]), "the command never uses matrix parameter lr:"),
        (lambda d: _container(d).update(args=["--output-dir={{ lr }}"]), "never uses matrix parameter lr:"),
    ],
)
def test_malformed_current_format_files_are_clear_errors(mutate, message):
    """The current format's hostile and mistyped files: each a one-line SearchError, never a
    TypeError from deep inside, and never a group folder outside the output folder."""
    doc = v1_doc()
    mutate(doc)
    with pytest.raises(SearchError, match=re.escape(message)):
        parse_polyaxonfile(doc)


def test_logspace_takes_its_base():
    """``logspace: start:stop:num:base`` (numpy's 4th positional argument is endpoint, not base)."""
    from mnistkit.polyaxonfile import parse_distribution

    assert parse_distribution("logspace", "0:3:4:2", "m").points() == [1.0, 2.0, 4.0, 8.0]
    assert parse_distribution("logspace", "0:3:4", "m").points() == [1.0, 10.0, 100.0, 1000.0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--metric", "accuracy"],
            "--metric 'accuracy' is not recorded by a trial; use test_accuracy, test_loss, best_epoch",
        ),
        (["--group-name", "../x"], "--group-name '../x' must be letters, digits"),
        (
            ["--metric", "best_epoch"],
            "--metric best_epoch is neither better high nor low: add --minimize or --maximize",
        ),
        (["--run-name", "foo"], "--run-name names one training run; name a search's folder with --group-name"),
    ],
)
def test_search_options_are_checked_before_any_trial_runs(flags, message, tmp_path):
    r = CliRunner(mix_stderr=False).invoke(
        train_main, ["-f", str(SEED_FILE), "--output-dir", str(tmp_path / "out"), *flags]
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_data_fails_once_before_any_trial(tmp_path):
    """Run where MNIST is not (the default data folder is relative to the working directory):
    one line saying where to point, no trial started, no group folder."""
    r = CliRunner(mix_stderr=False).invoke(
        train_main,
        ["-f", str(SEED_FILE), "--output-dir", str(tmp_path / "out")],
        env={"MNISTKIT_DATA_DIR": str(tmp_path / "no-data")},
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: MNIST files not found in"), r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_training_flag_fails_before_anything_runs(tmp_path):
    doc = seed_doc()
    doc["run"]["cmd"] = "python run.py --lr={{ lr }} --momentum={{ momentum }} --warmup=3"
    f = tmp_path / "bad.yml"
    f.write_text(yaml.safe_dump(doc))
    r = CliRunner(mix_stderr=False).invoke(train_main, ["-f", str(f), "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "Error: the training command of trial 0 is not valid: --warmup is not a training option; use one of "
        "--batch-size, --data-dir, --epochs, --eval-last, --label-smoothing, --log-interval, --lr, --momentum, "
        "--no-cuda, --optimizer, --precision, --scheduler, --seed, --shift, --test-batch-size, --test-samples, "
        "--train-samples, --weight-decay"
    ]
    assert not (tmp_path / "out").exists()


def test_yaml_errors_and_missing_files(tmp_path):
    (tmp_path / "broken.yml").write_text("kind: group\nhptuning: [\n")
    with pytest.raises(SearchError, match="not valid YAML at line"):
        read_polyaxonfile(tmp_path / "broken.yml")
    with pytest.raises(SearchError, match="cannot read"):
        read_polyaxonfile(tmp_path / "none.yml")


def _matrix(doc, algorithm, matrix, **hptuning):
    doc["hptuning"] = {algorithm: hptuning or None, "matrix": matrix}
    return doc


#: 2018-format files that ran wrong (a matrix value never trained), hung, or gave a traceback
UNUSABLE_FILES = {
    "unused-matrix-param": (
        lambda d: d["run"].update(cmd="python run.py --momentum={{ momentum }} --epochs={{ epochs }}"),
        "the command never uses matrix parameter lr: every trial would train without it; give it to a "
        "training flag (e.g. --lr={{ lr }}) or remove it from the matrix",
    ),
    "empty-cmd": (lambda d: d["run"].update(cmd=""), "never uses matrix parameters lr, momentum"),
    "n-experiments-huge": (
        lambda d: d["hptuning"]["random_search"].update(n_experiments=1_000_000_000),
        "the search has 1,000,000,000 trials; at most 10,000 run here: make n_experiments smaller",
    ),
    "grid-of-1e8": (
        lambda d: _matrix(
            d, "grid_search", {"lr": {"linspace": "0.001:0.1:10000"}, "momentum": {"linspace": "0.1:0.9:10000"}}
        ),
        "the search has 100,000,000 trials; at most 10,000 run here: make the grid smaller (or set n_experiments)",
    ),
    "n-experiments-nan": (
        lambda d: d["hptuning"]["random_search"].update(n_experiments=float("nan")),
        "n_experiments: nan is not a whole number",
    ),
    "n-experiments-inf": (
        lambda d: d["hptuning"]["random_search"].update(n_experiments=float("inf")),
        "n_experiments: inf is not a whole number",
    ),
    "grid-n-experiments-fraction": (
        lambda d: _matrix(
            d, "grid_search", {"lr": {"values": [0.1]}, "momentum": {"values": [0.5]}}, n_experiments=1.5
        ),
        "grid_search.n_experiments: 1.5 is not a whole number",
    ),
    "range-to-inf": (
        lambda d: _matrix(d, "grid_search", {"lr": {"range": [0, float("inf"), 1]}, "momentum": {"values": [0.5]}}),
        "hptuning.matrix.lr: range needs finite numbers",
    ),
    "range-past-a-float": (
        lambda d: d["hptuning"]["matrix"].update(lr={"range": [-1.0e308, 1.0e308, 1]}),
        "range [-1e+308, 1e+308, 1] gives more than a float can count values; at most 10000",
    ),
    "logspace-overflow": (
        lambda d: d["hptuning"]["matrix"].update(lr={"logspace": "1:1000:5"}),
        "hptuning.matrix.lr: logspace '1:1000:5' gives values too large for a number (inf)",
    ),
    "random-search-not-a-mapping": (
        lambda d: d["hptuning"].update(random_search=5),
        "hptuning.random_search must be a mapping, not int",
    ),
    "early-stopping-not-a-list": (
        lambda d: d["hptuning"].update(early_stopping=5),
        "hptuning.early_stopping must be a list",
    ),
}


@pytest.mark.parametrize("case", list(UNUSABLE_FILES), ids=list(UNUSABLE_FILES))
def test_unusable_searches_are_refused_when_read_without_a_warning(case):
    mutate, message = UNUSABLE_FILES[case]
    doc = seed_doc()
    mutate(doc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SearchError, match=re.escape(message)):
            parse_polyaxonfile(doc)
    assert [str(w.message) for w in caught] == []


def test_the_trial_cap_holds_for_a_search_made_in_python_and_a_capped_grid_is_not_built_whole():
    huge = replace(read_polyaxonfile(SEED_FILE), n_runs=MAX_TRIALS + 1)
    with pytest.raises(SearchError, match="has 10,001 trials; at most 10,000"):
        plan_trials(huge)
    grid = parse_polyaxonfile(
        _matrix(
            seed_doc(),
            "grid_search",
            {"lr": {"linspace": "0.001:0.1:10000"}, "momentum": {"linspace": "0.1:0.9:10000"}},
            n_experiments=3,
        )
    )
    assert [p["momentum"] for p in plan_trials(grid)] == pytest.approx([0.1, 0.1 + 0.8 / 9999, 0.1 + 1.6 / 9999])


def _file_of(case):
    """The bytes of a polyaxonfile: a case of UNUSABLE_FILES, or one that is not UTF-8."""
    if case == "not-utf-8":
        return b"kind: group\n# caf\xe9\n"
    doc = seed_doc()
    UNUSABLE_FILES[case][0](doc)
    return yaml.safe_dump(doc).encode()


@pytest.mark.parametrize("case", ["not-utf-8", *UNUSABLE_FILES], ids=["not-utf-8", *UNUSABLE_FILES])
def test_unusable_files_are_one_error_line_and_no_group_folder(case, tmp_path):
    f = tmp_path / "search.yml"
    f.write_bytes(_file_of(case))
    message = "is not UTF-8 text (byte 17); save it as UTF-8" if case == "not-utf-8" else UNUSABLE_FILES[case][1]
    caps = ["--train-samples", "300", "--test-samples", "300", "--max-epochs", "1"]  # short, should one ever run
    r = CliRunner(mix_stderr=False).invoke(train_main, ["-f", str(f), "--output-dir", str(tmp_path / "out"), *caps])
    assert r.exit_code == 1 and r.stderr.splitlines() == [r.stderr.splitlines()[0]], r.stderr
    assert r.stderr.startswith("Error: ") and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_failing_trial_is_recorded_and_the_group_completes(tmp_path):
    doc = seed_doc()
    doc["hptuning"]["matrix"] = {"lr": {"values": [0.1, 1.0e6]}, "momentum": {"values": [0.5]}}  # 1e6 diverges
    doc["hptuning"].pop("random_search")
    doc["hptuning"]["grid_search"] = None
    result = run_group(parse_polyaxonfile(doc), SearchConfig(output_dir=str(tmp_path), group_name="g", **CAPS))
    status = {t.params["lr"]: t for t in result.trials}
    assert status[0.1].status == "done"
    assert status[1e6].status == "failed" and "diverged" in status[1e6].error
    assert result.best is status[0.1]
    rows = json.loads((tmp_path / "g" / "trials.json").read_text())
    assert rows[1]["status"] == "failed" and "diverged" in rows[1]["error"]


def test_every_trial_failing_fails_the_command(tmp_path):
    doc = seed_doc()
    doc["hptuning"]["matrix"] = {"lr": {"values": [1.0e6]}, "momentum": {"values": [0.5]}}
    doc["hptuning"]["random_search"]["n_experiments"] = 1
    f = tmp_path / "bad.yml"
    f.write_text(yaml.safe_dump(doc))
    r = CliRunner(mix_stderr=False).invoke(
        train_main,
        [
            "-f",
            str(f),
            "--output-dir",
            str(tmp_path),
            "--train-samples",
            "300",
            "--test-samples",
            "300",
            "--max-epochs",
            "1",
            "-q",
        ],
    )
    assert r.exit_code == 1 and r.stderr.startswith("Error: every trial failed (training diverged")


@pytest.mark.parametrize(
    "stop, optimization",
    [
        ({"metric": "test_loss", "value": 0.1}, "minimize"),  # it read "maximize": the first trial stopped the group
        ({"metric": "test_accuracy", "value": 0.9}, "maximize"),
        ({"metric": "test_loss", "value": 0.1, "optimization": "maximize"}, "maximize"),  # said: as said
    ],
)
def test_an_early_stop_without_optimization_goes_the_way_its_metric_gets_better(stop, optimization):
    doc = seed_doc()
    doc["hptuning"]["early_stopping"] = [stop]
    assert parse_polyaxonfile(doc).early_stopping[0].optimization == optimization


def test_early_stopping_stops_the_group_and_a_rerun_stops_before_training_anything(tmp_path):
    doc = seed_doc()
    doc["hptuning"]["early_stopping"] = [{"metric": "test_accuracy", "value": 0.0, "optimization": "maximize"}]
    config = SearchConfig(output_dir=str(tmp_path), group_name="es", concurrency=1, **CAPS)
    result = run_group(parse_polyaxonfile(doc), config)
    assert [t.status for t in result.trials][:1] == ["done"]
    assert all(t.status == "stopped" and "early stopping" in t.error for t in result.trials[1:])
    again = run_group(parse_polyaxonfile(doc), config)  # the reused trial-000 meets the condition again
    assert [t.status for t in again.trials] == [t.status for t in result.trials] and again.trials[0].reused
    assert not (tmp_path / "es" / "trials" / "trial-001").exists()  # nothing more was launched
    assert again.best.name == "trial-000" and read_best(tmp_path / "es")["trial"] == "trial-000"


def test_current_format_runs_and_resumes(tmp_path):
    doc = {
        "version": 1.1,
        "kind": "operation",
        "name": "mnist",
        "matrix": {"kind": "grid", "concurrency": 2, "params": {"lr": {"kind": "choice", "value": [0.05, 0.1]}}},
        "params": {"momentum": {"value": 0.5}},
        "component": {
            "kind": "component",
            "inputs": [{"name": "lr", "type": "float"}, {"name": "momentum", "type": "float"}],
            "run": {
                "kind": "job",
                "container": {
                    "image": "x",
                    "command": ["mnistkit-train"],
                    "args": [
                        "--lr={{ lr }}",
                        "--momentum={{ momentum }}",
                        "--output-dir={{ globals.run_outputs_path }}",
                    ],
                },
            },
        },
    }
    f = tmp_path / "op.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert polyaxon_check(f).returncode == 0  # the real client accepts our test file too
    config = SearchConfig(output_dir=str(tmp_path), group_name="v1", **CAPS)
    first = run_group(read_polyaxonfile(f), config)
    assert sorted(t.params["lr"] for t in first.trials) == [0.05, 0.1]
    again = run_group(read_polyaxonfile(f), config)  # finished trials are reused, not re-run
    assert [t.artifact_sha256 for t in again.trials] == [t.artifact_sha256 for t in first.trials]


def test_export_passes_the_real_polyaxon_check_and_a_broken_one_fails(tmp_path):
    spec = read_polyaxonfile(SEED_FILE)
    out = write_v1(
        spec,
        tmp_path / "polyaxonfile.yaml",
        image="localhost:5000/mnistkit/builder:0.1.0",
        extra_args=("--train-samples=2000",),
        volumes=(("mnistkit-data", "/data", True),),
    )
    r = polyaxon_check(out)
    assert r.returncode == 0 and "Polyaxonfile valid" in r.stdout, r.stdout + r.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["matrix"]["kind"] == "random" and doc["matrix"]["numRuns"] == 10
    assert doc["matrix"]["params"]["lr"] == {"kind": "linspace", "value": "0.001:0.1:5"}
    assert doc["component"]["run"]["container"]["command"] == ["mnistkit-train"]
    assert "--lr={{ lr }}" in doc["component"]["run"]["container"]["args"]
    doc["matrix"]["numRun"] = doc["matrix"].pop("numRuns")  # a typo
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    assert polyaxon_check(broken).returncode != 0
    # the exported file reads back as the same search
    back = read_polyaxonfile(out)
    assert back.matrix == spec.matrix and back.n_runs == 10


def test_ctrl_c_keeps_finished_trials(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mnistkit.cli.train",
        "-f",
        str(SEED_FILE),
        "--output-dir",
        str(tmp_path),
        "--group-name",
        "cc",
        "--concurrency",
        "1",
        "--train-samples",
        "600",
        "--test-samples",
        "500",
        "--max-epochs",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    table = tmp_path / "cc" / "trials.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (table.exists() and '"done"' in table.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = json.loads(table.read_text())
    assert rows[0]["status"] == "done"
    assert any(r["status"] == "stopped" for r in rows) and not any(r["status"] == "running" for r in rows)
    assert read_best(tmp_path / "cc")["trial"] == "trial-000"


def test_ctrl_c_at_a_terminal_leaves_no_half_removed_trial_folder(tmp_path):
    """The terminal sends SIGINT to the whole process group: the running trial cleans up its own
    folder. Found by review: the group then sent it SIGTERM at once, which interrupted that
    clean-up and left an empty trial folder. Every trial folder left is a finished trial's. (The
    window is the few milliseconds of a trial's clean-up, so this catches a regression only some of
    the time; the grace period itself is what closes it.)"""
    cmd = [sys.executable, "-m", "mnistkit.cli.train", "-f", str(SEED_FILE), "--output-dir", str(tmp_path)]
    cmd += ["--group-name", "cc", "--concurrency", "2", "--train-samples", "3000", "--test-samples", "500"]
    proc = subprocess.Popen(
        [*cmd, "--max-epochs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    trials = tmp_path / "cc" / "trials"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(trials.glob("*/metrics.jsonl")):
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    left = [d for d in trials.iterdir() if d.is_dir()]
    assert all((d / "result.json").exists() for d in left), [
        (d.name, sorted(p.name for p in d.iterdir())) for d in left
    ]


def test_kind_experiment_is_one_training(tmp_path):
    doc = {
        "version": 1,
        "kind": "experiment",
        "declarations": {"lr": 0.1},
        "run": {"cmd": "python run.py --lr={{ lr }} --epochs=1"},
    }
    spec = parse_polyaxonfile(doc)
    assert spec.algorithm == "single" and plan_trials(spec) == [{"lr": 0.1}]
    result = run_group(
        spec, SearchConfig(output_dir=str(tmp_path), group_name="one", train_samples=300, test_samples=300)
    )
    assert len(result.trials) == 1 and result.best.status == "done"
    assert json.loads((tmp_path / "one" / "trials" / "trial-000" / "config.json").read_text())["config"]["lr"] == 0.1


# -- faults and resume: kill -9 loses no finished trial; reuse only the identical ---------------


def _grid_file(tmp_path, lrs=(0.05, 0.1), extra="", name="grid.yml"):
    doc = seed_doc()
    doc["hptuning"] = {"concurrency": 1, "grid_search": None, "matrix": {"lr": {"values": list(lrs)}}}
    doc["run"]["cmd"] = "python run.py --lr={{ lr }} --momentum=0.5 " + extra
    f = tmp_path / name
    f.write_text(yaml.safe_dump(doc))
    return f


def _group_cmd(polyaxonfile, out, name, *extra):
    return [
        sys.executable,
        "-m",
        "mnistkit.cli.train",
        "-f",
        str(polyaxonfile),
        "--output-dir",
        str(out),
        "--group-name",
        name,
        "--train-samples",
        "600",
        "--test-samples",
        "500",
        "--max-epochs",
        "1",
        *extra,
    ]


def _children(pid):
    """Processes whose parent is ``pid`` (read from /proc: no psutil here)."""
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat))
    return out


def _alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _trial_of(pid, name):
    try:
        return name in open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return False


def _rows(group):
    try:
        return {r["trial"]: r for r in json.loads((group / "trials.json").read_text())}
    except (OSError, ValueError):
        return {}


def _running_trial(proc, group, name):
    """The pid of trial ``name`` once it runs (the trials before it done)."""

    def find():
        return next((c for c in _children(proc.pid) if _trial_of(c, f"{name}.json")), None)

    return _wait_for(find)


def test_kill_9_of_a_running_trial_loses_no_finished_trial(tmp_path):
    f = _grid_file(tmp_path, lrs=(0.05, 0.1, 0.02))
    cmd = _group_cmd(f, tmp_path, "k")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = _running_trial(proc, tmp_path / "k", "trial-001")
    assert _rows(tmp_path / "k")["trial-000"]["status"] == "done"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = _rows(tmp_path / "k")
    assert [rows[t]["status"] for t in sorted(rows)] == ["done", "failed", "done"]
    assert rows["trial-001"]["error"] == "killed by signal 9"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "reusing 2 of 3 trials" in again.stderr and "reused 2 of 3 trials" in again.stdout
    table = {line.split()[0]: line for line in again.stdout.splitlines() if line.startswith("trial-")}
    assert "(reused)" in table["trial-000"] and "(reused)" in table["trial-002"]
    assert "(reused)" not in table["trial-001"] and " done " in table["trial-001"]
    after = _rows(tmp_path / "k")
    assert [after[t]["artifact_sha256"] for t in ("trial-000", "trial-002")] == [
        rows[t]["artifact_sha256"] for t in ("trial-000", "trial-002")
    ]


def test_kill_9_of_the_group_loses_no_finished_trial_and_leaves_no_orphan(tmp_path):
    f = _grid_file(tmp_path, lrs=(0.05, 0.1, 0.02))
    cmd = _group_cmd(f, tmp_path, "g")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    trial = _running_trial(proc, tmp_path / "g", "trial-001")
    proc.kill()  # SIGKILL: no handler, no clean-up in the group process
    proc.communicate(timeout=60)
    _wait_for(lambda: not _alive(trial), timeout=2)  # the kernel ended the orphan trial at once
    assert not (tmp_path / "g" / "trials" / "trial-001" / "result.json").exists()
    first = _rows(tmp_path / "g")
    assert first["trial-000"]["status"] == "done"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "reusing 1 of 3 trials" in again.stderr and "reused 1 of 3 trials" in again.stdout
    rows = _rows(tmp_path / "g")
    assert all(r["status"] == "done" for r in rows.values()) and rows["trial-000"]["reused"]
    assert rows["trial-000"]["artifact_sha256"] == first["trial-000"]["artifact_sha256"]


@pytest.fixture(scope="module")
def finished_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    f = _grid_file(out)
    r = CliRunner(mix_stderr=False).invoke(train_main, _group_cmd(f, out, "base")[3:] + ["-q"])
    assert r.exit_code == 0, r.stderr
    return out


RESUME_CASES = {
    "identical": ((), {}, 2, ""),
    "epochs-cap": (("--max-epochs", "2"), {}, 0, "epochs 1 -> 2"),
    "train-samples-cap": (("--train-samples", "700"), {}, 0, "train_samples 600 -> 700"),
    "training-flag": (("--seed", "2"), {}, 0, "seed 1 -> 2"),
    "file-value": ((), {"lrs": (0.05, 0.2)}, 1, "lr 0.1 -> 0.2"),
    "file-flag": ((), {"extra": "--weight-decay=0.001"}, 0, "weight_decay 0.0 -> 0.001"),
    # where the data is belongs to the machine, however it is spelled (here: absolute, trailing slash)
    "data-dir-spelling": (("--data-dir", f"{REPO / 'examples' / 'data'}/"), {}, 2, ""),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES), ids=sorted(RESUME_CASES))
def test_resume_reuses_a_trial_only_when_its_configuration_is_identical(case, finished_group, tmp_path):
    args, file_change, reused, why = RESUME_CASES[case]
    shutil.copytree(finished_group / "base", tmp_path / "base")
    f = _grid_file(tmp_path, **file_change)
    cmd = _group_cmd(f, tmp_path, "base")[3:]
    for flag, value in zip(args[::2], args[1::2], strict=True):  # the case's flag replaces the default one
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = value
        else:
            cmd += [flag, value]
    r = CliRunner(mix_stderr=False).invoke(train_main, cmd)
    assert r.exit_code == 0, r.stderr
    assert f"reusing {reused} of 2 trials" in r.stderr and why in r.stderr
    assert r.stdout.count("(reused)") == reused
    assert (f"reused {reused} of 2 trials" in r.stdout) == bool(reused)
    rows = _rows(tmp_path / "base")
    assert sum(row["reused"] for row in rows.values()) == reused and all(x["status"] == "done" for x in rows.values())


@pytest.mark.parametrize(
    "flag",
    [
        "--export=/tmp/mnistkit-export-attempt.yml",
        "-f /etc/passwd",
        "--import-legacy=/etc/passwd",
        "--group-name=x",
        "--concurrency=8",
        "--threads=64",
        "--download",
        "--json",
        "--recipe=x",
    ],
)
def test_a_polyaxonfile_command_sets_training_options_only(flag, tmp_path):
    f = _grid_file(tmp_path, extra=flag)
    r = CliRunner(mix_stderr=False).invoke(train_main, _group_cmd(f, tmp_path / "out", "x")[3:])
    assert r.exit_code == 1
    name = flag.split("=")[0].split()[0]
    assert (
        r.stderr.splitlines() == [r.stderr.splitlines()[0]]
        and f"the training command of trial 0 is not valid: {name} is not a training option" in r.stderr
    )
    assert not (tmp_path / "out").exists() and not os.path.exists("/tmp/mnistkit-export-attempt.yml")


@pytest.mark.parametrize("flag", ["--output-dir={where}", "--output-dir {where}", "--run-name=../../{name}"])
def test_output_flags_of_a_polyaxonfile_are_dropped_and_said(flag, tmp_path):
    where = tmp_path / "elsewhere"
    f = _grid_file(tmp_path, lrs=(0.1,), extra=flag.format(where=where, name="escaped"))
    r = CliRunner(mix_stderr=False).invoke(train_main, _group_cmd(f, tmp_path / "out", "x")[3:])
    assert r.exit_code == 0, r.stderr
    assert f"ignoring {flag.split('=')[0].split()[0]} of the polyaxonfile" in r.stderr
    assert (tmp_path / "out" / "x" / "trials" / "trial-000" / "result.json").exists()
    assert not where.exists() and not list(tmp_path.parent.glob("escaped*"))


def test_the_same_search_twice_gives_the_same_bytes_with_concurrency_2(tmp_path):
    """Two trials at once, 1 thread each, run twice into two group folders: every trial's
    artifact has the same sha256 both times (and the two trials differ from each other)."""
    spec = read_polyaxonfile(SEED_FILE)
    from dataclasses import replace

    spec = replace(spec, n_runs=2)
    runs = [
        run_group(
            spec,
            SearchConfig(
                output_dir=str(tmp_path),
                group_name=f"g{i}",
                concurrency=2,
                train_samples=600,
                test_samples=300,
                max_epochs=1,
            ),
        )
        for i in range(2)
    ]
    first, second = ([t.artifact_sha256 for t in r.trials] for r in runs)
    assert first == second and len(set(first)) == 2 and all(first)


def test_a_second_run_of_a_running_group_is_refused_and_harms_nothing(tmp_path):
    f = _grid_file(tmp_path)
    cmd = _group_cmd(f, tmp_path, "busy")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _running_trial(first, tmp_path / "busy", "trial-000")
    group_json = (tmp_path / "busy" / "group.json").read_bytes()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and second.stderr.splitlines() == [
        f"Error: group {tmp_path / 'busy'} is being run by another process (pid {first.pid}); wait for it to end, "
        "or give this run another --group-name"
    ], second.stderr
    assert (tmp_path / "busy" / "group.json").read_bytes() == group_json
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    rows = _rows(tmp_path / "busy")
    assert [rows[t]["status"] for t in sorted(rows)] == ["done", "done"] and not any(r["reused"] for r in rows.values())
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # the lock went with its process
    assert again.returncode == 0 and "reusing 2 of 2 trials" in again.stderr, again.stderr


GOOD_BEST = {
    "trial": "trial-000",
    "artifact": "/elsewhere/trial-000/model",
    "artifact_relative": "trials/trial-000/model",
    "artifact_sha256": "ab" * 32,
}


@pytest.mark.parametrize(
    "record, why",
    [
        ([], "a JSON list, not an object"),
        ({k: v for k, v in GOOD_BEST.items() if k != "artifact_sha256"}, "artifact_sha256 missing or not text"),
        ({**GOOD_BEST, "artifact_relative": 7}, "artifact_relative missing or not text"),
        ({**GOOD_BEST, "trial": None, "artifact": ["x"]}, "trial, artifact missing or not text"),
        ({**GOOD_BEST, "artifact_relative": "../../etc"}, "artifact_relative '../../etc' points outside the group"),
        ({**GOOD_BEST, "artifact_relative": "/etc"}, "artifact_relative '/etc' points outside the group folder"),
        ({**GOOD_BEST, "artifact_relative": "out/model"}, "artifact_relative 'out/model' points outside the group"),
    ],
    ids=["list", "no-sha256", "relative-not-text", "two-fields", "dot-dot", "absolute", "symlink-out"],
)
def test_a_damaged_best_json_is_one_error_saying_to_rerun_the_group(record, why, tmp_path):
    group = tmp_path / "g"
    group.mkdir()
    (group / "out").symlink_to(tmp_path)
    (group / "best.json").write_text(json.dumps(record))
    with pytest.raises(SearchError) as e:
        read_best(group)
    line = str(e.value)
    assert line.startswith(f"{group / 'best.json'} is damaged ({why}") and "\n" not in line
    assert line.endswith("); re-run the group to record its best trial again")


def test_a_sound_best_json_prefers_the_artifact_inside_the_group_folder(tmp_path):
    (tmp_path / "best.json").write_text(json.dumps(GOOD_BEST))
    assert read_best(tmp_path)["artifact"] == GOOD_BEST["artifact"]  # not there: the recorded path
    (tmp_path / "trials" / "trial-000" / "model").mkdir(parents=True)
    assert read_best(tmp_path)["artifact"] == str(tmp_path / "trials" / "trial-000" / "model")


def test_a_damaged_group_json_is_one_error(tmp_path):
    (tmp_path / "group.json").write_text(json.dumps({"algorithm": "grid", "matrix": ["lr"]}))
    with pytest.raises(SearchError, match="group.json is missing or from another mnistkit version; re-run"):
        spec_from_group(tmp_path)
