import json
import re
from dataclasses import replace

import pytest
import torch

from mnistkit.artifact import load_model, sha256_file
from mnistkit.config import TrainConfig
from mnistkit.errors import ConfigError, TrainingError
from mnistkit.tracking import read_metrics
from mnistkit.train import fit
from support import REPO


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


def test_threads_apply_while_training_and_are_restored(mnist, tmp_path):
    before = torch.get_num_threads()
    seen = []
    config = TrainConfig(epochs=1, train_samples=256, test_samples=100, threads=1, output_dir=str(tmp_path))
    fit(config, mnist, on_epoch=lambda m: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before


def test_the_callers_random_generator_is_left_as_it_was(mnist, tmp_path):
    """fit seeds torch's global generator to train; the caller's stream goes on as if it had not."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(TrainConfig(epochs=1, train_samples=256, test_samples=100, output_dir=str(tmp_path)), mnist)
    assert torch.equal(torch.rand(3), expected)


def test_divergence_is_a_training_error(mnist, tmp_path):
    """Nothing was saved: no half-made run folder, nor the --output-dir folders the run made."""
    out = tmp_path / "new" / "runs"
    config = TrainConfig(epochs=1, lr=1e6, momentum=0.9, train_samples=512, output_dir=str(out), run_name="x")
    with pytest.raises(TrainingError, match="diverged"):
        fit(config, mnist)
    assert list(tmp_path.iterdir()) == []  # (it left an empty new/runs)
    (tmp_path / "kept").mkdir()  # a folder that was there stays, empty or not
    with pytest.raises(TrainingError, match="diverged"):
        fit(replace(config, output_dir=str(tmp_path / "kept")), mnist)
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not list((tmp_path / "kept").iterdir())


def test_ctrl_c_keeps_the_best_epoch_so_far_or_nothing(tmp_path):
    """SIGINT to the CLI: before any epoch finished, the run folder goes; after one, its saved
    model stays (complete, loadable), no result.json (the run did not finish), and it is said."""
    import signal
    import subprocess
    import sys
    import time

    from mnistkit.local._proc import wait_until

    def train(name: str, samples: int) -> subprocess.Popen[str]:  # an epoch of 60,000 takes seconds here
        cmd = [sys.executable, "-m", "mnistkit.cli.train", "--epochs", "50", "--train-samples", str(samples)]
        return subprocess.Popen(
            [*cmd, "--output-dir", str(tmp_path), "--run-name", name], stderr=subprocess.PIPE, text=True
        )

    early = train("early", 60000)
    assert wait_until(lambda: (tmp_path / "early" / "config.json").exists(), 60, proc=early)
    early.send_signal(signal.SIGINT)
    assert early.wait(timeout=60) == 130
    assert not (tmp_path / "early").exists()

    late = train("late", 6000)
    assert wait_until(lambda: (tmp_path / "late" / "model" / "manifest.json").exists(), 120, proc=late)
    time.sleep(0.2)
    late.send_signal(signal.SIGINT)
    assert late.wait(timeout=60) == 130
    err = late.stderr.read()
    assert re.search(r"the best epoch so far \(\d+, accuracy", err) and "Traceback" not in err, err
    assert load_model(tmp_path / "late").manifest["metrics"]["epoch"] >= 1
    assert not (tmp_path / "late" / "result.json").exists()

    # SIGTERM (kill, timeout, a cancelled CI job) is handled as Ctrl-C is, and exits 143
    term = train("term", 60000)
    assert wait_until(lambda: (tmp_path / "term" / "config.json").exists(), 60, proc=term)
    term.send_signal(signal.SIGTERM)
    assert term.wait(timeout=60) == 143
    assert "Terminated." in term.stderr.read() and not (tmp_path / "term").exists()

    # and SIGHUP (a closed terminal or ssh session) too, exit 129: it used to kill the command
    # where it stood, and a pipeline's dockerd and registry kept running
    hup = train("hup", 60000)
    assert wait_until(lambda: (tmp_path / "hup" / "config.json").exists(), 60, proc=hup)
    hup.send_signal(signal.SIGHUP)
    assert hup.wait(timeout=60) == 129
    assert "Hung up." in hup.stderr.read() and not (tmp_path / "hup").exists()


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


def test_same_training_same_artifact_bytes(mnist, tmp_path):
    # other output folders, generated run names: the artifact (manifest included) is identical
    base = dict(epochs=1, train_samples=1024, test_samples=500, seed=7, batch_size=64)
    a = fit(TrainConfig(output_dir=str(tmp_path / "a"), **base), mnist)
    b = fit(TrainConfig(output_dir=str(tmp_path / "b"), **base), mnist)
    assert a.run_id != b.run_id and a.artifact_sha256 == b.artifact_sha256
    manifest = load_model(a.run_dir).manifest
    assert "created" not in manifest and "output_dir" not in manifest["train_config"]
    assert "id" not in manifest["run"]  # a generated folder name is not part of the model
    named = fit(TrainConfig(output_dir=str(tmp_path / "c"), run_name="named", **base), mnist)
    assert load_model(named.run_dir).manifest["run"]["id"] == "named"


def test_eval_last_evaluates_only_the_last_epochs(mnist, tmp_path):
    config = TrainConfig(
        epochs=3, eval_last=1, train_samples=512, test_samples=200, output_dir=str(tmp_path), run_name="r"
    )
    run = fit(config, mnist)
    assert [e.test_accuracy is None for e in run.epochs] == [True, True, False]
    assert run.best_epoch == 3
    rows = read_metrics(run.run_dir)
    assert "test_accuracy" not in rows[0] and "test_accuracy" in rows[2]


def test_shift_and_label_smoothing_train(mnist, tmp_path):
    config = TrainConfig(
        epochs=1,
        shift=1,
        label_smoothing=0.1,
        train_samples=2000,
        test_samples=500,
        lr=0.1,
        output_dir=str(tmp_path),
        run_name="r",
    )
    assert fit(config, mnist).best_accuracy > 0.5


def test_shifted_moves_each_image_within_bounds():
    import torch

    from mnistkit.train import _pad, _shifted

    img = torch.zeros(50, 1, 28, 28)
    img[:, :, 14, 14] = 1
    out = torch.cat([_shifted(_pad(img[i : i + 16], 0.0, 2), 2, i) for i in range(0, 50, 16)])
    assert out.shape == img.shape and out.sum() == 50
    ys, xs = (out[:, 0] == 1).nonzero()[:, 1], (out[:, 0] == 1).nonzero()[:, 2]
    assert (ys - 14).abs().max() <= 2 and (xs - 14).abs().max() <= 2
    assert len({(int(y), int(x)) for y, x in zip(ys, xs, strict=False)}) == 25  # all 25 offsets used


def test_fast99_recipe_is_a_valid_config():
    from dataclasses import replace

    from mnistkit.config import RECIPES

    config = replace(TrainConfig(), **RECIPES["fast99"]).validate()
    assert config.optimizer == "adam" and config.shift == 1 and config.eval_last == 3


@pytest.mark.parametrize("field, value", [("shift", 9), ("shift", -1), ("label_smoothing", 1.0), ("eval_last", 0)])
def test_new_values_are_checked(field, value):
    with pytest.raises(ConfigError):
        TrainConfig(**{field: value}).validate()


def test_a_library_caller_still_finalises_its_objects_at_exit(tmp_path):
    """fit used to register gc.freeze at exit in any process that called it (mnistkit-train's
    speed-up): a caller's own objects in reference cycles were then never finalised at exit."""
    import subprocess
    import sys

    data = REPO / "examples" / "data"
    code = (
        "from mnistkit.config import TrainConfig\n"
        "from mnistkit.train import fit\n"
        "class Held:\n"
        "    def __del__(self):\n"
        "        print('finalised', flush=True)\n"
        "held = Held()\n"
        "held.me = held\n"
        f"fit(TrainConfig(epochs=1, train_samples=64, test_samples=64, data_dir={str(data)!r}, "
        f"output_dir={str(tmp_path)!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "finalised", r.stdout
