"""Shared fixtures: the real MNIST data loaded once, and one tiny trained run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mnist():
    from mnistkit.data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory):
    """A real, short training run (5,000 images, 2 epochs): good enough to predict digits."""
    from mnistkit.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(epochs=2, lr=0.1, momentum=0.5, batch_size=64, train_samples=5000,
                         output_dir=str(out), run_name="tiny", seed=3)
    return fit(config, mnist)


@pytest.fixture(autouse=True)
def _no_polyaxon_env(monkeypatch):
    for key in ("POLYAXON_RUN_INSTANCE", "POLYAXON_IS_MANAGED", "MNISTKIT_POLYAXON"):
        monkeypatch.delenv(key, raising=False)
