"""The whole pipeline entry point, end to end, on the real services."""

from __future__ import annotations

import json
import urllib.request

import pytest
import yaml
from click.testing import CliRunner

from mnistkit.cli.pipeline import main as pipeline_main
from mnistkit.errors import PipelineError
from mnistkit.pipeline import PipelineConfig, run, summary_lines
from support import HOME, free_port

pytestmark = pytest.mark.docker


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def test_pipeline_end_to_end_and_again(docker_engine, builder_image, tmp_path):
    port = free_port()
    config = PipelineConfig(
        work_dir=str(tmp_path / "demo"), home=str(HOME), train_samples=10000, max_epochs=2, registry_port=port
    )
    first = run(config)
    assert list(first.steps) == ["services", "search", "build", "serve", "manifests"]
    assert first.reference.startswith(f"127.0.0.1:{port}/mnistkit/mnist@sha256:")
    right = sum(p["digit"] == p["label"] for p in first.predictions)
    assert len(first.predictions) == 11 and right >= 8
    summary = next(summary_lines(first))  # the file's values, and what this quick run capped
    assert summary.endswith("; capped: max_epochs=2, train_samples=10000)"), summary
    sd = yaml.safe_load((tmp_path / "demo" / "cluster" / "seldondeployment.yaml").read_text())
    assert sd["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["image"] == first.reference
    assert not _answers(port)  # the registry it started is stopped again
    assert not docker_engine.client().containers.list(filters={"ancestor": first.reference})

    # again, through the CLI: finished trials and layers are reused
    r = CliRunner(mix_stderr=False).invoke(
        pipeline_main,
        [
            "--work-dir",
            str(tmp_path / "demo"),
            "--train-samples",
            "10000",
            "--max-epochs",
            "2",
            "--registry-port",
            str(port),
            "--json",
        ],
        env={"MNISTKIT_HOME": str(HOME)},
    )
    assert r.exit_code == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["best"] == first.best and second["reference"] == first.reference
    assert second["steps"]["search"] < first.steps["search"]


def test_a_failing_step_is_named_and_cleaned_up(docker_engine, tmp_path):
    port = free_port()
    bad = tmp_path / "bad.yml"
    bad.write_text("kind: group\nhptuning: {matrix: {lr: {zipf: '1:2'}}}\nrun: {cmd: python run.py}\n")
    with pytest.raises(PipelineError, match="step 'search' failed: hptuning.matrix.lr: unknown distribution 'zipf'"):
        run(PipelineConfig(polyaxonfile=str(bad), work_dir=str(tmp_path), home=str(HOME), registry_port=port))
    assert not _answers(port)
    r = CliRunner(mix_stderr=False).invoke(
        pipeline_main,
        ["-f", str(bad), "--work-dir", str(tmp_path), "--registry-port", str(port)],
        env={"MNISTKIT_HOME": str(HOME)},
    )
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith("Error: step 'search' failed")
    # a search that fails after the services started (no MNIST where it looks): they are stopped
    r = CliRunner(mix_stderr=False).invoke(
        pipeline_main,
        ["--work-dir", str(tmp_path), "--registry-port", str(port)],
        env={"MNISTKIT_HOME": str(HOME), "MNISTKIT_DATA_DIR": str(tmp_path / "no-data")},
    )
    assert r.exit_code == 1 and "Error: step 'search' failed: MNIST files not found" in r.stderr, r.stderr
    assert not _answers(port)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--registry-port", "99999"], "--registry-port must be 0..65535 (0: any free port), got 99999"),
        (["--max-epochs", "0"], "--max-epochs must be at least 1 (got 0)"),
        (["-f", "nosuch.yml"], "step 'search' failed: cannot read nosuch.yml"),
        ([], "or pass -f FILE"),  # run outside the repository: it did not say what to do
    ],
)
def test_bad_options_are_one_line_before_any_service_starts(flags, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner(mix_stderr=False).invoke(
        pipeline_main, ["--work-dir", str(tmp_path / "w"), *flags], env={"MNISTKIT_HOME": str(tmp_path / "home")}
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "home").exists()  # no dockerd, no registry were started


def test_ctrl_c_stops_what_it_started(docker_engine, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnistkit.cli.pipeline",
            "--work-dir",
            str(tmp_path),
            "--registry-port",
            str(port),
            "--train-samples",
            "3000",
            "--max-epochs",
            "1",
        ],
        env={**os.environ, "MNISTKIT_HOME": str(HOME)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    table = tmp_path / "runs" / "demo" / "trials.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not table.exists():
        time.sleep(0.2)
    assert _answers(port)  # the registry is up while the search runs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not _answers(port)
    rows = json.loads(table.read_text())
    assert rows and not any(row["status"] == "running" for row in rows)
