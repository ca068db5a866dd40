import json

import pytest

from mnistkit.artifact import load_model, sha256_file
from mnistkit.config import TrainConfig
from mnistkit.errors import ConfigError, TrainingError
from mnistkit.tracking import read_metrics
from mnistkit.train import fit


def _weights_hash(run):
    return sha256_file(next(run.artifact.glob("weights-*.safetensors")))


def test_short_real_run_learns_and_records_everything(trained_run):
    run = trained_run
    assert run.best_accuracy > 0.90  # 5,000 images, 2 epochs, evaluated on all 10,000 test digits
    rows = read_metrics(run.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"train_loss", "test_loss", "test_accuracy", "seconds"} <= set(rows[0])
    best = max(rows, key=lambda r: r["test_accuracy"])
    assert run.best_epoch == best["step"] and run.best_accuracy == best["test_accuracy"]
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["config"]["seed"] == 3 and config["config"]["lr"] == 0.1
    assert "torch" in config["versions"]
    model = load_model(run.run_dir)
    assert model.sha256 == run.artifact_sha256
    assert model.manifest["metrics"]["epoch"] == run.best_epoch
    assert json.loads((run.run_dir / "result.json").read_text())["best_epoch"] == run.best_epoch


def test_same_seed_same_weights(mnist, tmp_path):
    base = dict(epochs=1, train_samples=1024, test_samples=500, output_dir=str(tmp_path), seed=7, batch_size=64)
    a = fit(TrainConfig(run_name="a", **base), mnist)
    b = fit(TrainConfig(run_name="b", **base), mnist)
    c = fit(TrainConfig(run_name="c", **{**base, "seed": 8}), mnist)
    assert _weights_hash(a) == _weights_hash(b)
    assert _weights_hash(a) != _weights_hash(c)


def test_keeps_best_epoch_not_last(mnist, tmp_path):
    # A learning rate high enough that a later epoch gets worse (seeded: the same curve every time):
    # the kept model is the best epoch's, not the last one's.
    config = TrainConfig(
        epochs=4,
        lr=0.15,
        momentum=0.8,
        train_samples=2000,
        test_samples=1000,
        output_dir=str(tmp_path),
        run_name="r",
        seed=1,
    )
    run = fit(config, mnist)
    accs = [e.test_accuracy for e in run.epochs]
    assert run.best_epoch < len(accs) and accs[-1] < run.best_accuracy  # this run did get worse at the end
    assert run.best_accuracy == max(accs) and accs[run.best_epoch - 1] == run.best_accuracy
    kept = load_model(run.run_dir).manifest["metrics"]
    assert kept["epoch"] == run.best_epoch and kept["test_accuracy"] == max(accs)


def test_divergence_is_a_training_error(mnist, tmp_path):
    config = TrainConfig(epochs=1, lr=1e6, momentum=0.9, train_samples=512, output_dir=str(tmp_path), run_name="x")
    with pytest.raises(TrainingError, match="diverged"):
        fit(config, mnist)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", -0.1, "--lr"),
        ("batch_size", 0, "--batch-size"),
        ("epochs", 0, "--epochs"),
        ("momentum", 1.5, "--momentum"),
        ("train_samples", 0, "--train-samples"),
        ("run_name", "../x", "--run-name"),
    ],
)
def test_bad_values_are_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


def test_existing_run_folder_is_not_overwritten(mnist, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        fit(TrainConfig(output_dir=str(tmp_path), run_name="r", epochs=1, train_samples=64), mnist)
    assert (tmp_path / "r" / "keep.txt").read_text() == "x"
