"""Training speed: the 2018 loop vs mnistkit's, side by side in one process.

The 2018 loop is pytorch/examples' MNIST training as the article ran it: a DataLoader
over torchvision's MNIST with per-sample ToTensor()+Normalize, batch 128, SGD lr 0.01
momentum 0.5, then a test pass over the 10,000 test images. mnistkit's loop
(``mnistkit.train.fit``) trains the same network on the same images with the same
hyper-parameters. Epochs alternate between the two, so machine noise hits both, and
the medians are compared.

    python benchmarks/train_bench.py [--epochs 3] [--samples 60000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mnistkit.config import TrainConfig
from mnistkit.data import _prepare_raw, load_mnist, resolve_data_dir
from mnistkit.network import Network
from mnistkit.train import EpochMetrics, bf16_supported, fit


def epochs_2018(root: str, samples: int, seed: int = 1) -> Iterator[tuple[float, float]]:
    """Yield (seconds, test accuracy) per epoch of the 2018 loop, forever."""
    torch.manual_seed(seed)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(root, train=True, download=False, transform=tf)
    test = datasets.MNIST(root, train=False, download=False, transform=tf)
    train_loader = DataLoader(Subset(train, range(min(samples, len(train)))), batch_size=128, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
    model = Network()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    while True:
        t0 = time.perf_counter()
        model.train()
        for data, target in train_loader:
            opt.zero_grad()
            F.nll_loss(model(data), target).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                correct += int((model(data).argmax(1) == target).sum())
        yield time.perf_counter() - t0, correct / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = ap.parse_args()
    root = str(_prepare_raw(resolve_data_dir()))
    data = load_mnist()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16_supported()}")
    print(
        f"{args.samples} training images per epoch, batch 128, SGD lr 0.01 momentum 0.5, {args.epochs} epochs each,"
        f" mnistkit precision {args.precision}\n"
    )

    old = epochs_2018(root, args.samples)
    old_epochs: list[tuple[float, float]] = []

    def after_each_mnistkit_epoch(_: EpochMetrics) -> None:
        old_epochs.append(next(old))  # then one 2018 epoch

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            batch_size=128,
            lr=0.01,
            momentum=0.5,
            epochs=args.epochs,
            train_samples=args.samples,
            output_dir=out,
            run_name="bench",
            seed=1,
            precision=args.precision,
        )
        result = fit(config, data, on_epoch=after_each_mnistkit_epoch)
    old_t = [t for t, _ in old_epochs]
    new_t = [m.seconds for m in result.epochs]
    fmt = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
    o, n = statistics.median(old_t), statistics.median(new_t)
    print(
        f"2018 loop      epoch seconds: {fmt(old_t)}  median {o:.2f}s  accuracy after {args.epochs}: {100 * old_epochs[-1][1]:.2f}%"
    )
    print(
        f"mnistkit loop  epoch seconds: {fmt(new_t)}  median {n:.2f}s  accuracy after {args.epochs}: {100 * result.epochs[-1].test_accuracy:.2f}%"
    )
    print(f"ratio mnistkit / 2018: {n / o:.3f}  (target <= 0.25)")


if __name__ == "__main__":
    main()
