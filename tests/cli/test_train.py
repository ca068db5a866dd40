import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from mnistkit.cli.build import main as build_main
from mnistkit.cli.query import main as query_main
from mnistkit.cli.train import main as train_main
from mnistkit.network import Network
from support import REPO


def test_train_cli_on_a_slice_of_real_mnist(tmp_path):
    result = CliRunner(mix_stderr=False).invoke(
        train_main,
        [
            "--epochs",
            "1",
            "--train-samples",
            "2000",
            "--test-samples",
            "1000",
            "--lr",
            "0.1",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "cli",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["run_id"] == "cli" and out["best_accuracy"] > 0.5  # chance is 0.1
    assert (tmp_path / "cli" / "model" / "manifest.json").exists()


def test_recipe_fast99_with_a_flag_beside_it(tmp_path):
    args = ["--recipe", "fast99", "--epochs", "2", "--train-samples", "1024", "--test-samples", "500"]
    result = CliRunner(mix_stderr=False).invoke(
        train_main, [*args, "--output-dir", str(tmp_path), "--run-name", "r", "--json"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["epochs"] == 2 and config["optimizer"] == "adam" and config["shift"] == 1  # the flag wins
    assert [e["test_accuracy"] is None for e in json.loads(result.stdout)["epochs"]] == [
        False,
        False,
    ]  # eval_last 3 > 2


def test_train_cli_defaults_are_the_2018_ones():
    params = {p.name: p.default for p in train_main.params}
    assert params["batch_size"] == 64 and params["test_batch_size"] == 1000 and params["epochs"] == 10
    assert params["lr"] == 0.01 and params["momentum"] == 0.5 and params["seed"] == 1 and params["log_interval"] == 10


def test_bad_flag_value_is_one_line_and_exit_1(tmp_path):
    result = CliRunner(mix_stderr=False).invoke(train_main, ["--lr", "-1", "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --lr must be a positive number torch can hold in float32 (got -1.0)"
    ]
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--concurrency", "2"], "--concurrency"),
        (["--max-epochs", "1", "--export", "e.yml"], "--max-epochs, --export"),
        (["--group-name", "g", "--minimize"], "--group-name, --minimize"),
        (["--image", "reg.example.com/train:1"], "--image"),
    ],
)
def test_search_flags_without_a_file_are_refused_not_ignored(flags, named, tmp_path):
    result = CliRunner(mix_stderr=False).invoke(train_main, [*flags, "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 1
    verb = "applies" if "," not in named else "apply"
    assert result.stderr.strip().splitlines() == [f"Error: {named} only {verb} to a search: add -f POLYAXONFILE"]
    assert not (tmp_path / "o").exists()


def test_image_without_export_is_refused_not_ignored(tmp_path):
    from support import REPO

    seed = REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml"
    args = ["-f", str(seed), "--image", "reg.example.com/train:1", "--output-dir", str(tmp_path / "o")]
    result = CliRunner(mix_stderr=False).invoke(train_main, args)
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        "Error: --image names the image of the exported polyaxonfile's trials: add --export FILE"
    ]
    assert not (tmp_path / "o").exists()


def test_export_writes_the_search_the_cluster_runs_whole_in_an_image_it_is_given(tmp_path):
    """--export needs --image (it defaulted to mnistkit/train:latest, a Docker Hub name nobody
    pushes); the file carries the training flags given beside -f, not the local caps (it carried
    --train-samples but not --max-epochs, half of what ran here)."""
    from support import REPO

    seed = REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml"
    out = tmp_path / "cluster.yml"
    base = ["-f", str(seed), "--export", str(out), "--output-dir", str(tmp_path / "o")]
    refused = CliRunner(mix_stderr=False).invoke(train_main, base)
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: --export needs --image")
    assert not out.exists() and not (tmp_path / "o").exists()

    caps = ["--train-samples", "300", "--test-samples", "300", "--max-epochs", "1", "--concurrency", "2"]
    data = ["--data-dir", str(REPO / "examples" / "data"), "-q"]
    args = [*base, "--image", "reg.example.com/mnistkit/train:t1", "--weight-decay", "0.0001", *caps, *data]
    result = CliRunner(mix_stderr=False).invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert "(without the local --train-samples, --test-samples, --max-epochs, --concurrency)" in result.stderr
    doc = yaml.safe_load(out.read_text())
    container = doc["component"]["run"]["container"]
    assert container["image"] == "reg.example.com/mnistkit/train:t1"
    assert "--weight-decay=0.0001" in container["args"]
    assert not [a for a in container["args"] if a.startswith(("--train-samples", "--test-samples"))]
    assert doc["matrix"]["concurrency"] == 5  # the file's: the cluster runs the whole search


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--epochs", "1", "--train-samples", "64", "--output-dir", str(blocker / "runs")]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot create run folder") and "Traceback" not in result.stderr


def test_missing_data_dir(tmp_path):
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "--data-dir" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [  # found by a new-user trial: each was a traceback, a segfault or a misleading line
        (["--seed", "99999999999999999999"], "--seed must be 0 .. 2^63-1"),
        (["--lr", "1e300"], "--lr must be a positive number torch can hold in float32"),
        (["--weight-decay", "1e300"], "--weight-decay must be >= 0 and a number torch can hold in float32"),
        (["--threads", "100000"], "--threads must be at most 1024"),
        (["--data-dir", ""], "--data-dir is empty"),
        (["--output-dir", "{tmp}/afile"], "--output-dir {tmp}/afile is a file, not a folder"),
        (["--output-dir", "{tmp}/broken"], "--output-dir {tmp}/broken is a link to /nowhere, which does not exist"),
        (["--run-name", "r" * 300], "cannot create run folder {tmp}/o/rrr"),
    ],
    ids=[
        "huge seed",
        "huge lr",
        "huge weight decay",
        "huge threads",
        "empty data dir",
        "output dir a file",
        "output dir a broken link",  # it said the run folder already existed
        "run name too long",  # it said to choose a writable --output-dir, and left that folder made
    ],
)
def test_values_no_run_can_use_are_one_line_and_leave_nothing(tmp_path, args, says):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "broken").symlink_to("/nowhere")
    args = [a.format(tmp=tmp_path) for a in args]
    out = ["--output-dir", str(tmp_path / "o")] if "--output-dir" not in args else []
    result = CliRunner(mix_stderr=False).invoke(train_main, ["--epochs", "1", "--train-samples", "64", *out, *args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + says.format(tmp=tmp_path)), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "broken"]  # no run folder, no output folder
    if "too long" in result.stderr:
        assert "File name too long; choose a shorter --run-name" in lines[0]


def test_a_bad_setting_leaves_no_output_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTKIT_POLYAXON", "banana")
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--epochs", "1", "--train-samples", "64", "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "MNISTKIT_POLYAXON='banana'" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--epochs", "5", "--lr", "0.3"], "--epochs, --lr cannot go with it"),
        (["--recipe", "fast99"], "--recipe cannot go with it"),
        (["-f", str(REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml")], "-f cannot go with it"),
    ],
    ids=["training flags", "a recipe", "a search"],
)
def test_import_legacy_refuses_what_it_would_ignore(tmp_path, extra, says):
    torch.save(Network().state_dict(), tmp_path / "model.dat")
    args = ["--import-legacy", str(tmp_path / "model.dat"), "--output-dir", str(tmp_path / "runs"), *extra]
    result = CliRunner(mix_stderr=False).invoke(train_main, args)
    assert result.exit_code == 1 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_import_legacy_refuses_nan_weights(tmp_path):
    state = Network().state_dict()
    state["fc2.bias"][0] = float("nan")
    torch.save(state, tmp_path / "model.dat")
    args = ["--import-legacy", str(tmp_path / "model.dat"), "--output-dir", str(tmp_path / "runs")]
    result = CliRunner(mix_stderr=False).invoke(train_main, args)
    assert result.exit_code == 1 and "NaN or infinite weights" in result.stderr
    assert not (tmp_path / "runs").exists()


def _run_ok(flags, tmp_path, name):
    """Train a run named ``name`` into tmp_path/runs; its manifest's bytes."""
    args = [*flags, "--data-dir", str(REPO / "examples" / "data"), "--output-dir", str(tmp_path / "runs")]
    result = CliRunner(mix_stderr=False).invoke(train_main, [*args, "--run-name", name])
    assert result.exit_code == 0, result.output
    return (tmp_path / "runs" / name / "model" / "manifest.json").read_bytes()


def test_import_legacy_cli(tmp_path):
    torch.save(Network().state_dict(), tmp_path / "model.dat")
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--import-legacy", str(tmp_path / "model.dat"), "--output-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "runs" / "imported-model" / "model" / "manifest.json"
    before = manifest.read_bytes()
    # another model.dat, or a trained run's name: refused, as training refuses it (it replaced the model)
    torch.save(Network().state_dict(), tmp_path / "model.dat")
    trained = _run_ok(["--epochs", "1", "--train-samples", "200", "--test-samples", "100"], tmp_path, "t1")
    for name in ("imported-model", "t1"):
        args = ["--import-legacy", str(tmp_path / "model.dat"), "--output-dir", str(tmp_path / "runs")]
        again = CliRunner(mix_stderr=False).invoke(train_main, [*args, *(["--run-name", name] if name == "t1" else [])])
        assert again.exit_code == 1 and f"run folder {tmp_path / 'runs' / name} already exists" in again.stderr
    assert (
        manifest.read_bytes() == before
        and (tmp_path / "runs" / "t1" / "model" / "manifest.json").read_bytes() == trained
    )


@pytest.mark.parametrize("command", ["mnistkit-train", "mnistkit-build", "mnistkit-query", "mnistkit-pipeline"])
def test_every_command_answers_help(command):
    from mnistkit.cli.pipeline import main as pipeline_main

    main = {
        "mnistkit-train": train_main,
        "mnistkit-build": build_main,
        "mnistkit-query": query_main,
        "mnistkit-pipeline": pipeline_main,
    }[command]
    result = CliRunner(mix_stderr=False).invoke(main, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_the_same_command_twice_gives_the_same_artifact_bytes(tmp_path):
    """As a user runs it: the same mnistkit-train command in two working folders, the same sha256."""
    command = [
        sys.executable,
        "-m",
        "mnistkit.cli.train",
        "--epochs",
        "1",
        "--train-samples",
        "1000",
        "--test-samples",
        "500",
        "--lr",
        "0.05",
        "--json",
        "-q",
    ]
    env = {**os.environ, "MNISTKIT_DATA_DIR": str(REPO / "examples" / "data")}
    shas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        r = subprocess.run(command, cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        shas.append(json.loads(r.stdout)["artifact_sha256"])
    assert shas[0] == shas[1]


def test_a_run_folder_reproduces_its_run_with_config(tmp_path):
    """--config RUN trains what RUN's config.json says, into a new folder under a new name: the
    same bytes (same machine, same threads); a flag beside it wins."""
    first = ["--epochs", "1", "--train-samples", "1000", "--test-samples", "500", "--lr", "0.05", "--momentum", "0.9"]
    runner = CliRunner(mix_stderr=False)
    result = runner.invoke(train_main, [*first, "--seed", "3", "--output-dir", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    original = json.loads(result.stdout)
    run = tmp_path / "a" / original["run_id"]  # a generated name: not part of the artifact's bytes
    again = runner.invoke(train_main, ["--config", str(run), "--output-dir", str(tmp_path / "b"), "--json"])
    assert again.exit_code == 0, again.output
    copy = json.loads(again.stdout)
    assert copy["artifact_sha256"] == original["artifact_sha256"] and copy["run_id"] != original["run_id"]
    saved = json.loads((tmp_path / "b" / copy["run_id"] / "config.json").read_text())["config"]
    assert (saved["seed"], saved["momentum"], saved["train_samples"]) == (3, 0.9, 1000)

    changed = runner.invoke(
        train_main,
        [
            "--config",
            str(run / "config.json"),
            "--seed",
            "4",
            "--output-dir",
            str(tmp_path / "c"),
            "--json",
        ],
    )
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout)["artifact_sha256"] != original["artifact_sha256"]  # another seed


def test_flags_beside_config_turn_its_switches_off_and_remove_its_caps(tmp_path, monkeypatch):
    """A saved config's switch (--no-cuda, --download) has its opposite (--cuda, --no-download),
    and a cap (--train-samples, --threads, --eval-last) can be set back to none, as a
    polyaxonfile's command may say too. Before, a saved --no-cuda could not be turned off."""
    from mnistkit.config import TrainConfig

    TrainConfig(epochs=1, train_samples=500, test_samples=200, no_cuda=True, eval_last=1, threads=1).save(
        tmp_path / "saved.json"
    )
    monkeypatch.setenv("MNISTKIT_DATA_DIR", str(REPO / "examples" / "data"))
    flags = ["--cuda", "--train-samples", "none", "--threads", "None", "--eval-last", "none", "--test-samples", "100"]
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--config", str(tmp_path / "saved.json"), *flags, "--output-dir", str(tmp_path / "o"), "--json"]
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "o" / json.loads(result.stdout)["run_id"]
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["no_cuda"], config["train_samples"], config["threads"], config["eval_last"]) == (
        False,
        None,
        None,
        None,
    )
    assert config["test_samples"] == 100 and config["epochs"] == 1
    kept = CliRunner(mix_stderr=False).invoke(
        train_main, ["--config", str(run), "--test-samples", "100", "--output-dir", str(tmp_path / "p"), "--json"]
    )  # the new run's own config: its switch stays off (nothing given)
    assert kept.exit_code == 0, kept.output
    again = json.loads((tmp_path / "p" / json.loads(kept.stdout)["run_id"] / "config.json").read_text())["config"]
    assert again["no_cuda"] is False and again["train_samples"] is None


@pytest.mark.parametrize(
    "args, says",
    [
        (["--config", "{missing}"], "cannot read the training config"),
        (["--config", "{bad}"], "unknown training option"),
        (["--config", "{list}"], "a training config is a JSON object, not list"),
        (["--config", "{good}", "--recipe", "fast99"], "--config and --recipe cannot be used together"),
        (["--config", "{good}", "-f", "{good}"], "--config and -f cannot be used together"),
        (["--config", ""], "the training config path is empty"),
    ],
    ids=["missing", "unknown key", "not an object", "with --recipe", "with -f", "empty"],
)
def test_a_config_that_cannot_be_used_is_one_line(tmp_path, args, says):
    files = {"bad": {"config": {"epochs": 1, "learning_rate": 0.1}}, "list": [1], "good": {"epochs": 1}}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    paths = {name: str(tmp_path / f"{name}.json") for name in [*files, "missing"]}
    result = CliRunner(mix_stderr=False).invoke(train_main, [a.format(**paths) for a in args])
    assert result.exit_code == 1 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_saved_config_keeps_its_training_not_its_places(tmp_path, monkeypatch):
    """--config FILE from another machine: its run name, output and data folders stay behind;
    the data comes from this machine's MNISTKIT_DATA_DIR."""
    from mnistkit.config import TrainConfig

    saved = TrainConfig(
        epochs=1, train_samples=500, test_samples=200, run_name="theirs", output_dir="/nowhere", data_dir="/their/data"
    )
    saved.save(tmp_path / "theirs.json")
    monkeypatch.setenv("MNISTKIT_DATA_DIR", str(REPO / "examples" / "data"))
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["--config", str(tmp_path / "theirs.json"), "--output-dir", str(tmp_path / "here"), "--json"]
    )
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    config = json.loads((tmp_path / "here" / run_id / "config.json").read_text())["config"]
    assert run_id != "theirs" and config["data_dir"] == str(REPO / "examples" / "data")
    assert (config["epochs"], config["train_samples"], config["test_samples"]) == (1, 500, 200)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--lr", "0.1"], "--lr is the search's to vary"),
        (["--recipe", "fast99"], "--lr is the search's to vary"),
    ],
)
def test_a_flag_the_matrix_varies_is_refused_beside_the_file(tmp_path, extra, says):
    """Found by review: `-f FILE --lr 0.1` trained every trial at 0.1, while the tables and
    best.json reported the matrix's learning rates."""
    seed = REPO / "examples" / "polyaxon" / "polyaxonfile_hyperparams.yml"
    result = CliRunner(mix_stderr=False).invoke(
        train_main, ["-f", str(seed), *extra, "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
