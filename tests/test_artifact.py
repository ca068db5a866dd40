"""The artifact: round trips, the 2018 import, and a fuzz corpus of hostile model folders."""

import hashlib
import json
import os
import pickle
import shutil
import struct

import pytest
import torch
from click.testing import CliRunner

from mnistkit.artifact import import_legacy, load_model, manifest_checksum, read_manifest, save_artifact
from mnistkit.cli.build import main as build_main
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


def test_saved_files_are_readable_by_other_users_as_the_umask_says(tmp_path):
    """Files written atomically (mkstemp, then rename) get open()'s mode, not mkstemp's 0o600:
    a served image may run as another uid than the one that wrote the model (Seldon's operator
    sets 8888; OpenShift an arbitrary one)."""
    import subprocess
    import sys

    code = (
        "import os, sys, torch\n"
        "from mnistkit.artifact import save_artifact\n"
        "from mnistkit.network import Network\n"
        "os.umask(int(sys.argv[2], 8))\n"
        "save_artifact(sys.argv[1], Network().state_dict())\n"
    )
    for umask, mode in (("022", 0o644), ("027", 0o640)):
        out = tmp_path / umask
        subprocess.run([sys.executable, "-c", code, str(out), umask], check=True)
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert len(modes) == 2 and set(modes.values()) == {mode}, modes


def test_a_folder_that_refuses_chmod_still_gets_the_file_and_no_leftovers(tmp_path, monkeypatch):
    """Some volumes refuse chmod (vfat, some CIFS and CSI mounts: EPERM). Simulated, as mounting
    one needs a loop device: the write still happens, with mkstemp's mode, and no dot-file stays."""
    import errno

    from mnistkit import files

    def refuse(fd: int, mode: int) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "fchmod", refuse)
    files.write_atomic(tmp_path / "config.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert (tmp_path / "config.json").read_text() == "{}"


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


def test_a_state_dict_of_the_wrong_shape_says_which_tensor(tmp_path):
    """Found by a new-user trial: the message stopped at torch's first line, 'Error(s) in loading'."""
    from mnistkit.network import Network

    state = Network().state_dict()
    state["fc1.weight"] = torch.zeros(50, 321)
    torch.save(state, tmp_path / "wide.dat")
    with pytest.raises(ArtifactError, match=r"size mismatch for fc1\.weight.*\[50, 321\]"):
        import_legacy(tmp_path / "wide.dat", tmp_path / "x")


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


def test_a_save_killed_before_its_manifest_leaves_the_previous_model_loadable(tmp_path):
    """kill -9 between the two renames runs no cleanup: the new weights (named by their own
    sha256) sit unlisted beside the old manifest. That folder is exactly what this builds."""
    save_artifact(tmp_path / "m", Network().state_dict())
    before = read_manifest(tmp_path / "m")[1]
    torch.manual_seed(7)
    save_artifact(tmp_path / "other", Network().state_dict())
    orphan = _weights_path(tmp_path / "other")
    shutil.copy(orphan, tmp_path / "m" / orphan.name)
    assert read_manifest(tmp_path / "m")[1] == before and load_model(tmp_path / "m").sha256 == before
    save_artifact(tmp_path / "m", Network().state_dict())  # the next save sweeps it
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manifest.json", _weights_path(tmp_path / "m").name]


def test_saving_over_an_exported_model_removes_the_old_onnx(tmp_path):
    """An earlier ONNX export belongs to earlier weights: a new save removes it with them."""
    save_artifact(tmp_path / "m", Network().state_dict())
    (tmp_path / "m" / "model.onnx").write_bytes(b"an export of other weights")
    save_artifact(tmp_path / "m", Network().state_dict())
    assert not (tmp_path / "m" / "model.onnx").exists()
    load_model(tmp_path / "m")


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(ArtifactError, match="no model at"):
        load_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a mnistkit model"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_model(tmp_path)


# -- a fuzz corpus of mutated and malicious model folders: none may load -------------------
#
# Each case takes a good artifact folder and does one thing to it; every one must be refused
# by read_manifest (no torch), load_model and `mnistkit-build --source-only` with exactly one
# ArtifactError line. "Re-signed" cases recompute the manifest's sha256s and checksum, as an
# attacker who edits the folder would, so only the check under test can stop them.


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("good") / "model"
    save_artifact(folder, Network().state_dict(), metrics={"test_accuracy": 0.9}, run={"id": "good"})
    return folder


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _weights_path(folder):
    return folder / _manifest(folder)["weights"]


def _resign(folder, manifest):
    """Write ``manifest`` with fresh sha256s of the files it lists and a fresh checksum."""
    files = manifest.get("files")
    for name in files if isinstance(files, dict) else ():
        if isinstance(files[name], str) and (folder / name).is_file():
            manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    manifest["checksum"] = manifest_checksum(manifest)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _edit(change):
    def mutate(folder):
        m = _manifest(folder)
        change(m, folder)
        _resign(folder, m)

    return mutate


def _replace_weights(data):
    """Put ``data`` where the weights were, re-signed."""

    def mutate(folder):
        path = _weights_path(folder)
        path.unlink()
        path.write_bytes(data(folder) if callable(data) else data)
        _resign(folder, _manifest(folder))

    return mutate


def _safetensors(header, payload=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _flip(path_of, offset):
    def mutate(folder):
        path = path_of(folder)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))

    return mutate


def _symlink_to_copy(name_of):
    def mutate(folder):
        name = name_of(folder)
        elsewhere = folder.parent / f"elsewhere-{name}"
        shutil.move(folder / name, elsewhere)
        (folder / name).symlink_to(elsewhere)

    return mutate


def _folder_symlink(folder):
    real = folder.parent / "real-model"
    shutil.move(folder, real)
    folder.symlink_to(real, target_is_directory=True)


def _host_file(folder):  # the manifest lists a link to a host file, with the host file's sha256
    (folder / "passwd").symlink_to("/etc/passwd")
    _edit(lambda m, f: m["files"].update({"passwd": ""}))(folder)


def _traversal(name):
    def change(m, folder):
        shutil.copy(folder / m["weights"], folder.parent / "outside.safetensors")
        m["files"][name] = hashlib.sha256((folder.parent / "outside.safetensors").read_bytes()).hexdigest()
        del m["files"][m["weights"]]
        m["weights"] = name

    return _edit(change)


def _pickle_payload(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"conv1.weight": Evil()})


def _fifo(folder):
    path = _weights_path(folder)
    path.unlink()
    os.mkfifo(path)


def _huge_tensor(folder):
    return _safetensors(
        {"conv1.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4]}}, b"\0" * 4
    )


def _other_dtype(folder):
    return _safetensors({"conv1.weight": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)


def _overlap(folder):
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    return _safetensors({"a": t, "b": t}, b"\0" * 8)


def _torch_pickle(folder):
    import io

    buf = io.BytesIO()
    torch.save(Network().state_dict(), buf)
    return buf.getvalue()


FOLDER_CASES = {
    # flipped bytes (more in the exhaustive flip tests below)
    "weights-flip-header": (_flip(_weights_path, 20), "does not match its sha256"),
    "weights-flip-data": (_flip(_weights_path, -10), "does not match its sha256"),
    "weights-truncated": (lambda f: _weights_path(f).write_bytes(_weights_path(f).read_bytes()[:-100]), "sha256"),
    "weights-appended": (lambda f: _weights_path(f).open("ab").write(b"\0"), "does not match its sha256"),
    "manifest-flip-sha": (_flip(lambda f: f / "manifest.json", 200), "manifest.json"),
    "manifest-edited-metric": (
        lambda f: (f / "manifest.json").write_text((f / "manifest.json").read_text().replace("0.9", "0.99")),
        "does not match its own checksum",
    ),
    # files renamed, missing, extra
    "weights-missing": (lambda f: _weights_path(f).unlink(), "is missing"),
    "weights-renamed": (lambda f: _weights_path(f).rename(f / "weights-0000000000000000.safetensors"), "is missing"),
    "manifest-missing": (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
    "manifest-renamed": (lambda f: (f / "manifest.json").rename(f / "Manifest.json"), "no manifest.json"),
    "extra-file": (lambda f: (f / "notes.txt").write_text("hello"), "notes.txt is not listed"),
    "extra-orphan-weights": (
        lambda f: shutil.copy(_weights_path(f), f / "weights-ffffffffffffffff.safetensors"),
        "is not listed",
    ),
    "extra-folder": (lambda f: (f / "sub").mkdir(), "sub is not listed"),
    "listed-file-missing": (_edit(lambda m, f: m["files"].update({"model.onnx": "0" * 64})), "model.onnx is missing"),
    # symbolic links
    "manifest-symlink": (_symlink_to_copy(lambda f: "manifest.json"), "symbolic link"),
    "weights-symlink": (_symlink_to_copy(lambda f: _manifest(f)["weights"]), "symbolic link"),
    "folder-symlink": (_folder_symlink, "symbolic link"),
    "listed-host-file-symlink": (_host_file, "symbolic link"),
    "extra-symlink-to-host-folder": (lambda f: (f / "host").symlink_to("/etc"), "host is not listed"),
    "weights-fifo": (_fifo, "not a plain file"),
    # the weights file's content, re-signed: only the header check can stop these
    "safetensors-huge-tensor": (_replace_weights(_huge_tensor), "more than 16777216 values"),
    "safetensors-huge-header-length": (_replace_weights(struct.pack("<Q", 1 << 60) + b"{}"), "header claims"),
    "safetensors-offsets-past-end": (
        _replace_weights(_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)),
        "accounts for",
    ),
    "safetensors-overlapping-tensors": (_replace_weights(_overlap), "overlap"),
    "safetensors-integer-dtype": (_replace_weights(_other_dtype), "no valid dtype"),
    "safetensors-header-not-json": (_replace_weights(struct.pack("<Q", 4) + b"nope"), "not a JSON object"),
    "pickle-named-safetensors": (_replace_weights(_torch_pickle), "is a pickle"),
    "evil-pickle-named-safetensors": (_replace_weights(lambda f: _pickle_payload(f.parent / "pwned")), "is a pickle"),
    # the manifest's content, re-signed
    "manifest-path-traversal": (_traversal("../outside.safetensors"), "not a plain name"),
    "manifest-absolute-path": (_traversal("/etc/passwd.safetensors"), "not a plain name"),
    "manifest-dot-file": (_traversal(".hidden.safetensors"), "not a plain name"),
    "manifest-lists-itself": (_edit(lambda m, f: m["files"].update({"manifest.json": "0" * 64})), "not a plain"),
    "manifest-weights-not-string": (_edit(lambda m, f: m.update(weights=12345)), "does not name a listed"),
    "manifest-sha-not-string": (_edit(lambda m, f: m["files"].update({m["weights"]: 1})), "not a sha256 hex"),
    "manifest-files-a-list": (_edit(lambda m, f: m.update(files=[m["weights"]])), "lists no files"),
    "manifest-weights-not-safetensors": (
        _edit(lambda m, f: m.update(weights="model.onnx", files={**m["files"], "model.onnx": "0" * 64})),
        "does not name a listed .safetensors",
    ),
    "manifest-metrics-not-object": (_edit(lambda m, f: m.update(metrics="high")), "'metrics' must be a JSON object"),
    "manifest-other-preprocessing": (
        _edit(lambda m, f: m["preprocessing"].update(mean=0.5)),
        "preprocessing that is not mnistkit's",
    ),
    "manifest-unknown-format": (_edit(lambda m, f: m.update(format="mnistkit-artifact/9")), "not a mnistkit artifact"),
    "manifest-no-checksum": (lambda f: _manifest_without_checksum(f), "does not match its own checksum"),
    "manifest-duplicate-key": (
        lambda f: (f / "manifest.json").write_text('{"format": "mnistkit-artifact/2", "format": "x"}'),
        "appears twice",
    ),
    "manifest-not-json": (lambda f: (f / "manifest.json").write_bytes(b"\x80\x04garbage"), "not UTF-8"),
    "manifest-json-array": (lambda f: (f / "manifest.json").write_text("[1, 2]"), "not a JSON object"),
    "manifest-2mb": (lambda f: (f / "manifest.json").write_text(" " * (2 << 20) + "{}"), "larger than"),
}


def _manifest_without_checksum(folder):
    m = _manifest(folder)
    del m["checksum"]
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case", sorted(FOLDER_CASES), ids=sorted(FOLDER_CASES))
def test_no_mutated_or_malicious_model_folder_loads(case, good, tmp_path):
    mutate, message = FOLDER_CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    mutate(folder)
    for load in (read_manifest, load_model):
        with pytest.raises(ArtifactError, match=message) as refused:
            load(folder)
        assert "\n" not in str(refused.value)
    r = CliRunner(mix_stderr=False).invoke(build_main, [str(folder), "--source-only", str(tmp_path / "src")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("Error: "), r.stderr
    assert not (tmp_path / "src").exists() and not (tmp_path / "pwned").exists()


def test_every_single_byte_flip_of_the_manifest_is_refused(good, tmp_path):
    raw = (good / "manifest.json").read_bytes()
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    loaded = []
    for i in range(len(raw)):
        (folder / "manifest.json").write_bytes(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
        try:
            read_manifest(folder)
            loaded.append(i)
        except ArtifactError as e:
            assert "\n" not in str(e)
    assert len(raw) > 500 and loaded == []


def test_byte_flips_of_the_weights_are_refused(good, tmp_path):
    raw = _weights_path(good).read_bytes()
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    positions = [*range(header), *range(header, len(raw), 997), len(raw) - 1]
    for i in positions:
        _weights_path(folder).write_bytes(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
        with pytest.raises(ArtifactError, match="does not match its sha256"):
            read_manifest(folder)
    assert len(positions) > 500


@pytest.mark.parametrize(
    "case",
    ["dot-files-of-an-interrupted-write", "listed-onnx-file", "format-1-without-checksum"],
)
def test_what_still_loads(case, good, tmp_path):
    """Controls: the checks refuse the cases above, not every folder."""
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    if case == "dot-files-of-an-interrupted-write":
        (folder / ".manifest.json.k2j3h4").write_text('{"half": ')
        (folder / f".{_manifest(folder)['weights']}.x8y9").write_bytes(b"\x80half a pickle")
    elif case == "listed-onnx-file":  # another runtime's file, listed with its sha256
        (folder / "model.onnx").write_bytes(b"onnx bytes")
        _edit(lambda m, f: m["files"].update({"model.onnx": ""}))(folder)
    else:
        m = _manifest(folder)
        del m["checksum"]
        m["format"] = "mnistkit-artifact/1"
        (folder / "manifest.json").write_text(json.dumps(m))
    assert read_manifest(folder)[1] == load_model(folder).sha256


def _evil_payloads(marker):
    import builtins
    import subprocess

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Exec:
        def __reduce__(self):
            return (builtins.exec, (f"open({str(marker)!r}, 'w').close()",))

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    return {"os.system": System(), "builtins.exec": Exec(), "subprocess.Popen": Popen()}


def _write_legacy(path, obj, container):
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=container == "torch-zip")


@pytest.mark.parametrize("container", ["raw-pickle", "torch-zip", "torch-legacy"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.Popen"])
def test_a_code_running_model_dat_is_refused_and_never_runs(payload, container, tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_payloads(marker)[payload]
    dat = tmp_path / "model.dat"
    _write_legacy(dat, {"conv1.weight": evil}, container)
    # the payload is real: plain pickle.load would run it
    if container == "raw-pickle":
        ran = pickle.loads(dat.read_bytes())["conv1.weight"]
        getattr(ran, "wait", lambda: None)()
        assert marker.exists()
        marker.unlink()
    with pytest.raises(ArtifactError, match="refused to unpickle it") as refused:
        import_legacy(dat, tmp_path / "imported")
    assert "\n" not in str(refused.value) and "weights_only` set to `False" not in str(refused.value)
    r = CliRunner(mix_stderr=False).invoke(
        __import__("mnistkit.cli.train", fromlist=["main"]).main,
        ["--import-legacy", str(dat), "--output-dir", str(tmp_path / "runs")],
    )
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "refused to unpickle" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "imported").exists()


def _huge_legacy_storage(path):
    import io

    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(4)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    at = data.find(b"K\x04", data.find(b"X\x03\x00\x00\x00cpu"))  # the storage's element count
    path.write_bytes(data[:at] + b"\x8a\x08" + (1 << 40).to_bytes(8, "little") + data[at + 2 :])


LEGACY_CASES = {
    "a-whole-pickled-module": (lambda p: torch.save(Network(), p), "refused to unpickle"),
    "storage-claiming-a-terabyte": (_huge_legacy_storage, "refused to unpickle"),
    "values-not-tensors": (lambda p: torch.save({"conv1.weight": [1.0, 2.0]}, p), "state_dict of tensors"),
    "another-network": (lambda p: torch.save({"weight": torch.zeros(3)}, p), "does not fit the seed network"),
    "empty-file": (lambda p: p.write_bytes(b""), "refused to unpickle"),
    "truncated-zip": (
        lambda p: (torch.save(Network().state_dict(), p), p.write_bytes(p.read_bytes()[:500])),
        "refused",
    ),
    "sparse-100mb": (lambda p: os.truncate(p, 100 << 20) if p.touch() is None else None, "a 2018 state_dict"),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES), ids=sorted(LEGACY_CASES))
def test_a_bad_model_dat_is_one_clear_error(case, tmp_path):
    make, message = LEGACY_CASES[case]
    dat = tmp_path / "model.dat"
    make(dat)
    with pytest.raises(ArtifactError, match=message) as refused:
        import_legacy(dat, tmp_path / "imported")
    assert "\n" not in str(refused.value) and not (tmp_path / "imported").exists()


def test_a_2018_legacy_format_state_dict_imports(tmp_path):
    net = Network()
    torch.save(net.state_dict(), tmp_path / "model.dat", _use_new_zipfile_serialization=False)
    import_legacy(tmp_path / "model.dat", tmp_path / "imported")
    loaded = load_model(tmp_path / "imported").network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


def test_the_weights_header_is_checked_also_under_python_O():
    """``python -O`` (or PYTHONOPTIMIZE) drops assert statements: the header checks are plain ifs."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from mnistkit.artifact import _safetensors_header\n"
        "from mnistkit.errors import ArtifactError\n"
        "bad = [[1], {'t': {'dtype': 'I64', 'shape': [1], 'data_offsets': [0, 8]}},\n"
        "       {'t': {'dtype': 'F32', 'shape': [-1, -1], 'data_offsets': [0, 4]}},\n"
        "       {'t': {'dtype': 'F32', 'shape': [1] * 9, 'data_offsets': [0, 4]}}]\n"
        "for header in bad:\n"
        "    h = json.dumps(header).encode()\n"
        "    data = len(h).to_bytes(8, 'little') + h + bytes(8)\n"
        "    try:\n"
        "        _safetensors_header(data, len(data), Path('w.safetensors'))\n"
        "    except ArtifactError:\n"
        "        continue\n"
        "    sys.exit(f'accepted {header}')\n"
    )
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
