import gzip
import shutil

import pytest
import torch

from mnistkit.data import MEAN, STD, load_mnist, preprocess
from mnistkit.errors import DataError
from support import REPO

RAW = REPO / "examples" / "data" / "MNIST" / "raw"


def test_real_mnist_shapes_and_labels(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and set(mnist.test_labels.tolist()) == set(range(10))
    # the first test digit of MNIST is a 7, the first training digit a 5
    assert int(mnist.test_labels[0]) == 7 and int(mnist.train_labels[0]) == 5


def test_preprocess_divides_by_255_then_normalises():
    x = torch.tensor([[0, 255] * 392], dtype=torch.uint8).reshape(28, 28)
    y = preprocess(x)
    assert y.shape == (1, 1, 28, 28) and y.dtype == torch.float32
    assert torch.isclose(y[0, 0, 0, 0], torch.tensor((0 - MEAN) / STD))
    assert torch.isclose(y[0, 0, 0, 1], torch.tensor((1 - MEAN) / STD))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.float64])
def test_preprocess_same_for_every_input_dtype(mnist, dtype):
    img = mnist.test_images[:4]
    assert torch.equal(preprocess(img.to(dtype)), preprocess(img))
    assert preprocess(img).shape == (4, 1, 28, 28)
    assert torch.equal(preprocess(img.unsqueeze(1)), preprocess(img))


def _copy_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in RAW.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return raw


def test_missing_files_name_the_flag_and_env(tmp_path):
    with pytest.raises(DataError, match="--data-dir or \\$MNISTKIT_DATA_DIR"):
        load_mnist(tmp_path)


def test_truncated_gz_is_a_clear_error(tmp_path):
    raw = _copy_gz(tmp_path)
    data = (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_mnist(tmp_path)


def test_a_disk_that_fills_while_decompressing_is_a_clear_error(tmp_path):
    """A real tmpfs with room for the .gz files and not for what they decompress to: the error
    names the disk, not the source (before: "corrupt or truncated; replace it with the original")."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        raw = _copy_gz(disk)
        with pytest.raises(DataError, match="cannot decompress .* the disk is full") as e:
            load_mnist(disk)
        assert "corrupt" not in str(e.value)
        assert not [p.name for p in raw.glob(".*") if not p.name.endswith(".verified")]  # no partial file left
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_wrong_content_is_a_clear_error(tmp_path):
    raw = _copy_gz(tmp_path)
    content = bytearray(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    content[100] ^= 0xFF  # one flipped byte, same size
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="md5"):
        load_mnist(tmp_path)


def test_decompresses_into_writable_data_dir_and_reuses(tmp_path, monkeypatch):
    raw = _copy_gz(tmp_path)
    data = load_mnist(tmp_path)
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == 7840016
    assert len(data.test_images) == 10000
    leftovers = [p.name for p in raw.glob(".*") if not p.name.endswith(".verified")]
    assert not leftovers  # no temporary files left behind
    # the second load decompresses nothing and computes no md5: it only stats the files
    import mnistkit.data as data_module

    mtimes = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    md5_calls = []
    monkeypatch.setattr(data_module, "_md5", lambda path: md5_calls.append(path) or "")
    monkeypatch.setattr(data_module.gzip, "open", lambda *a, **k: pytest.fail("decompressed again"))
    again = load_mnist(tmp_path)
    assert md5_calls == [] and {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes
    assert bool((again.test_images == data.test_images).all())


def test_the_idx_reader_matches_torchvision(mnist):
    from torchvision.datasets import MNIST  # the reference reader, in the test environment only

    reference = MNIST("examples/data", train=False, download=False)
    assert bool((reference.data == mnist.test_images).all()) and bool((reference.targets == mnist.test_labels).all())
