"""Serving runtimes: numpy preprocessing equals torch's, the ONNX export matches torch on the
whole MNIST test set, ONNX Runtime serves the same answers, and a swapped model is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mnistkit.artifact import ONNX_FILE, read_manifest
from mnistkit.data import preprocess, preprocess_numpy
from mnistkit.errors import PackagingError, ServingError
from mnistkit.export import MAX_DIFF, attach_onnx, check_parity, export_onnx
from mnistkit.runtime import OnnxPredictor, TorchPredictor, load_predictor
from mnistkit.serving import MnistModel


@pytest.fixture(scope="module")
def onnx_model(trained_run, mnist, tmp_path_factory):
    """A copy of the tiny run's model with model.onnx attached, as a build makes it."""
    folder = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(trained_run.artifact, folder)
    record = attach_onnx(folder, images=mnist.test_images.numpy())
    return folder, record


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory):
    """The ONNX export of another network (random weights): a real model that is not ours."""
    from mnistkit.artifact import save_artifact
    from mnistkit.network import Network

    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("other") / "model"
    save_artifact(folder, Network().state_dict())
    return export_onnx(folder)


@pytest.mark.parametrize(
    "shape", [(28, 28), (1, 28, 28), (7, 28, 28), (7, 1, 28, 28)], ids=["one", "batch of one", "batch", "NCHW"]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_numpy_preprocessing_equals_torch_bit_for_bit_on_real_digits(mnist, shape, dtype):
    n = int(np.prod(shape)) // 784
    digits = mnist.test_images[:n].numpy().reshape(shape).astype(dtype)
    want = preprocess(torch.from_numpy(digits)).numpy()
    got = preprocess_numpy(digits)
    assert got.dtype == np.float32 and got.shape == want.shape == (n, 1, 28, 28)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # identical bits, not merely close


def test_an_export_made_twice_still_names_the_trained_artifact(trained_run, mnist, tmp_path):
    """The second export's record named the manifest the first had changed, not the trained run."""
    from mnistkit.artifact import read_manifest

    folder = tmp_path / "model"
    shutil.copytree(trained_run.artifact, folder)
    trained = read_manifest(folder)[1]
    images = mnist.test_images[:200].numpy()
    assert attach_onnx(folder, images=images)["source_sha256"] == trained
    assert attach_onnx(folder, images=images)["source_sha256"] == trained
    assert read_manifest(folder)[0]["onnx"]["source_sha256"] == trained


def test_export_parity_over_the_whole_test_set(onnx_model):
    _, record = onnx_model
    parity = record["parity"]
    assert parity["images"] == 10000
    assert parity["max_abs_diff"] <= MAX_DIFF
    assert parity["argmax_equal"] == 10000


def test_export_is_byte_for_byte_reproducible(trained_run):
    assert export_onnx(trained_run.artifact) == export_onnx(trained_run.artifact)


def test_onnx_answers_equal_torch_answers(onnx_model, trained_run, mnist):
    folder, _ = onnx_model
    images = mnist.test_images[:2000].numpy().astype(np.float32)
    onnx, reference = OnnxPredictor(folder), TorchPredictor(trained_run.artifact)
    got, want = onnx.predict(images), reference.predict(images)
    assert np.abs(got - want).max() <= MAX_DIFF
    assert (got.argmax(1) == want.argmax(1)).all()


def test_manifest_ties_the_onnx_file_to_the_weights(onnx_model, trained_run):
    folder, record = onnx_model
    manifest, _, _ = read_manifest(folder)
    assert manifest["files"][ONNX_FILE] == record["sha256"]
    assert record["weights_sha256"] == manifest["files"][manifest["weights"]]
    assert record["source_sha256"] == trained_run.artifact_sha256
    model = MnistModel(str(folder))
    assert model.tags()["model_sha256"] == trained_run.artifact_sha256  # the trained model's identity
    assert model.init_metadata()["platform"] == "onnxruntime"


@pytest.mark.parametrize(
    "runtime, want",
    [("auto", OnnxPredictor), ("onnx", OnnxPredictor), ("torch", TorchPredictor)],
)
def test_load_predictor_picks_onnx_when_present(onnx_model, runtime, want):
    assert type(load_predictor(onnx_model[0], runtime=runtime)) is want


def test_runtime_setting_chooses_torch_for_the_seldon_class(onnx_model, monkeypatch, mnist):
    monkeypatch.setenv("MNISTKIT_RUNTIME", "torch")
    model = MnistModel(str(onnx_model[0]))
    model.load()
    assert model._predictor.runtime == "torch" and model.init_metadata()["platform"] == "pytorch"


def test_onnx_runtime_without_an_onnx_model_says_how_to_build_one(trained_run):
    with pytest.raises(ServingError, match="--runtime onnx"):
        load_predictor(trained_run.artifact, runtime="onnx")


def _swap(folder, tmp_path, data, edit: str):
    import hashlib

    from mnistkit.artifact import manifest_checksum

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (copy / ONNX_FILE).write_bytes(data)
    manifest = json.loads((copy / "manifest.json").read_text())
    if edit != "none":  # list the new file's sha256, as someone who edits the manifest would
        manifest["files"][ONNX_FILE] = hashlib.sha256(data).hexdigest()
    if edit == "files and checksum":  # the checksum is no secret: recompute it too
        manifest["checksum"] = manifest_checksum(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        ("none", "does not match its sha256"),
        ("files", "does not match its own checksum"),
        ("files and checksum", "does not match its model.onnx and weights"),
    ],
    ids=["file swapped", "file swapped, manifest files edited", "file swapped, manifest files and checksum edited"],
)
def test_swapped_onnx_is_refused_at_start_up(onnx_model, other_onnx, tmp_path, edit, message):
    copy = _swap(onnx_model[0], tmp_path, other_onnx, edit)
    with pytest.raises(ServingError, match=message):
        model = MnistModel(str(copy))
        model.load()


def test_parity_failure_fails_the_export(trained_run, other_onnx, mnist, tmp_path, monkeypatch):
    """A model whose ONNX does not compute what torch computes is never attached."""
    folder = tmp_path / "model"
    shutil.copytree(trained_run.artifact, folder)
    monkeypatch.setattr("mnistkit.export.export_onnx", lambda _: other_onnx)  # a real, wrong model
    with pytest.raises(PackagingError, match="does not match torch"):
        attach_onnx(folder, images=mnist.test_images[:500].numpy())
    assert not (folder / ONNX_FILE).exists()
    assert "onnx" not in read_manifest(folder)[0]


def test_parity_counts_disagreements(trained_run, other_onnx, mnist):
    parity = check_parity(trained_run.artifact, other_onnx, mnist.test_images[:300].numpy())
    assert not parity.ok and parity.max_abs_diff > MAX_DIFF and parity.argmax_equal < 300


@pytest.mark.parametrize("runtime, has_onnx", [("onnx", True), ("torch", False)])
def test_build_source_folder_has_onnx_only_for_the_onnx_runtime(trained_run, tmp_path, runtime, has_onnx):
    from mnistkit.cli.build import main

    out = tmp_path / "src"
    args = [str(trained_run.run_dir), "--source-only", str(out), "--runtime", runtime, "--work-dir", str(tmp_path)]
    result = CliRunner(mix_stderr=False).invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert (out / "model" / ONNX_FILE).exists() == has_onnx
    manifest, _, _ = read_manifest(out / "model")
    assert ("onnx" in manifest) == has_onnx


def test_a_failed_export_leaves_no_source_folder_and_a_rerun_works(trained_run, tmp_path, monkeypatch):
    """The ONNX export needs MNIST's test set for its parity check; without it the build fails in
    one line and leaves nothing at --source-only (before, a half-made folder that a rerun refused)."""
    from mnistkit.cli.build import main

    out = tmp_path / "out" / "src"
    args = [str(trained_run.run_dir), "--source-only", str(out), "--work-dir", str(tmp_path / "work")]
    monkeypatch.setenv("MNISTKIT_DATA_DIR", str(tmp_path / "no-data"))
    result = CliRunner(mix_stderr=False).invoke(main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.delenv("MNISTKIT_DATA_DIR")
    result = CliRunner(mix_stderr=False).invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert (out / "model" / ONNX_FILE).exists() and list((tmp_path / "out").iterdir()) == [out]
