"""Polyaxon reporting with the real polyaxon client, in its offline mode (no API server
can run here; offline mode is the client's own way of writing the same events)."""

import gc
import warnings

import pytest

from mnistkit.config import TrainConfig
from mnistkit.tracking import polyaxon_managed, read_metrics
from mnistkit.train import fit


def test_managed_detection():
    assert polyaxon_managed({"POLYAXON_RUN_INSTANCE": "acme.mnist.runs.1234"})
    assert polyaxon_managed({"POLYAXON_IS_MANAGED": "true"})
    assert not polyaxon_managed({})
    assert not polyaxon_managed({"POLYAXON_RUN_INSTANCE": "x", "MNISTKIT_POLYAXON": "off"})


def test_metrics_reach_polyaxon_and_the_run_folder(mnist, tmp_path, monkeypatch):
    pytest.importorskip("polyaxon")
    monkeypatch.setenv("MNISTKIT_POLYAXON", "offline")
    run = fit(
        TrainConfig(epochs=2, train_samples=512, test_samples=500, output_dir=str(tmp_path), run_name="px"), mnist
    )
    events = run.run_dir / "polyaxon" / "events" / "metric"
    acc = (events / "test_accuracy.plx").read_text().splitlines()
    assert acc[0] == "step|timestamp|metric"
    steps = [line.split("|") for line in acc[1:]]
    assert [int(s[0]) for s in steps] == [1, 2]
    local = read_metrics(run.run_dir)
    assert [float(s[2]) for s in steps] == pytest.approx([r["test_accuracy"] for r in local])
    assert (events / "train_loss.plx").exists() and (events / "test_loss.plx").exists()


def test_polyaxon_on_outside_a_polyaxon_job_names_the_setting(mnist, tmp_path, monkeypatch):
    """Found by a new-user trial: the client's own "Please provide a valid project" alone did not
    say which setting asked for Polyaxon. Nothing is left behind either."""
    pytest.importorskip("polyaxon")
    from mnistkit.errors import ConfigError

    for key in ("POLYAXON_RUN_INSTANCE", "POLYAXON_IS_MANAGED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MNISTKIT_POLYAXON", "on")
    config = TrainConfig(epochs=1, train_samples=64, test_samples=64, output_dir=str(tmp_path / "o" / "runs"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ConfigError, match="Polyaxon tracking could not start .*MNISTKIT_POLYAXON=offline or off"):
            fit(config, mnist)
        gc.collect()  # an unclosed metrics.jsonl warns when its file object goes
    assert not (tmp_path / "o").exists()  # nor the folders made for --output-dir
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and "metrics.jsonl" in str(w.message)]
