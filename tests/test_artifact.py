import json
import pickle

import pytest
import torch

from mnistkit.artifact import import_legacy, load_model, read_manifest, save_artifact
from mnistkit.errors import ArtifactError
from mnistkit.network import Network


def _weights(path):
    return {k: v.clone() for k, v in load_model(path).network.state_dict().items()}


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    net = Network()
    sha = save_artifact(tmp_path / "m", net.state_dict(), metrics={"test_accuracy": 0.5}, run={"id": "r1"})
    model = load_model(tmp_path / "m")
    assert model.sha256 == sha and len(sha) == 64
    for k, v in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v)
    m = model.manifest
    assert m["metrics"]["test_accuracy"] == 0.5 and m["run"]["id"] == "r1"
    assert m["preprocessing"] == {
        "scale": 255.0,
        "mean": 0.1307,
        "std": 0.3081,
        "layout": "NCHW",
        "input": "raw pixels 0..255, white on black",
    }
    assert {"mnistkit", "torch", "python"} <= set(m["versions"])
    assert not model.network.training
    # a run folder and the manifest path both resolve to the same artifact
    assert load_model(tmp_path / "m" / "manifest.json").sha256 == sha


def test_flipped_byte_in_weights_is_refused(tmp_path):
    save_artifact(tmp_path / "m", Network().state_dict())
    weights = next((tmp_path / "m").glob("weights-*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        load_model(tmp_path / "m")


def test_edited_manifest_checksum_is_refused(tmp_path):
    save_artifact(tmp_path / "m", Network().state_dict())
    path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][manifest["weights"]] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="modified"):
        load_model(tmp_path / "m")


class _Evil:
    """Unpickling this would create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "model.dat"
    raw.write_bytes(pickle.dumps({"conv1.weight": _Evil(marker)}))
    zipped = tmp_path / "model.pt"
    torch.save({"conv1.weight": _Evil(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(ArtifactError, match="pickle"):
            load_model(path)
        with pytest.raises(ArtifactError, match="refused to unpickle"):
            import_legacy(path, tmp_path / "imported")
    assert not marker.exists()
    assert not (tmp_path / "imported").exists()


def test_2018_model_dat_imports_with_identical_weights(tmp_path):
    torch.manual_seed(1)
    net = Network()
    torch.save(net.state_dict(), tmp_path / "model.dat")  # what the 2018 test() wrote
    sha = import_legacy(tmp_path / "model.dat", tmp_path / "imported")
    model = load_model(tmp_path / "imported")
    assert model.sha256 == sha
    for k, v in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v)


def test_state_dict_of_another_network_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.dat")
    with pytest.raises(ArtifactError, match="does not fit the seed network"):
        import_legacy(tmp_path / "other.dat", tmp_path / "x")


def test_failed_save_leaves_previous_model_loadable(tmp_path, monkeypatch):
    torch.manual_seed(0)
    first = Network()
    save_artifact(tmp_path / "m", first.state_dict())
    before = _weights(tmp_path / "m")

    import mnistkit.artifact as artifact

    real = artifact._atomic_write

    def crash_on_manifest(path, data):
        if path.name == "manifest.json":
            raise KeyboardInterrupt  # killed between the weights and the manifest
        real(path, data)

    monkeypatch.setattr(artifact, "_atomic_write", crash_on_manifest)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(tmp_path / "m", Network().state_dict())
    monkeypatch.undo()
    after = _weights(tmp_path / "m")
    assert all(torch.equal(before[k], after[k]) for k in before)
    read_manifest(tmp_path / "m")  # still verifies
    assert not list((tmp_path / "m").glob(".*"))  # no temp files left


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(ArtifactError, match="no model at"):
        load_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a mnistkit model"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_model(tmp_path)
