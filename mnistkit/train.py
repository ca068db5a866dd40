"""fit(config) -> RunResult: the training loop, on the whole data set held in memory.

Per epoch: one random permutation, batches sliced from one normalised tensor
(channels_last, bf16 autocast where the CPU has native bf16), then a full evaluation on
the test set. The best epoch's weights (by test accuracy) are kept as the run's
artifact, written atomically each time they improve.

``python -m mnistkit.train --config FILE`` runs one saved ``TrainConfig``: that is how a
search runs its trials, each reporting through its run folder's ``result.json`` (and an
error file when it fails), never through its output.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._version import __version__
from .artifact import save_artifact
from .config import TrainConfig
from .data import MNISTData, load_mnist, preprocess
from .errors import ConfigError, MnistkitError, TrainingError
from .files import write_atomic
from .network import Network
from .tracking import Tracker, open_tracker

__all__ = ["TrainConfig", "RunResult", "EpochMetrics", "fit", "evaluate", "bf16_supported", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced. Also saved as ``<run>/result.json``."""

    run_dir: Path
    run_id: str
    best_epoch: int
    best_accuracy: float
    best_test_loss: float
    artifact: Path
    artifact_sha256: str
    epochs: list[EpochMetrics] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["artifact"] = str(self.artifact)
        return d


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (otherwise autocast to bf16 is slower)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported()) or bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def _device(config: TrainConfig) -> torch.device:
    if not config.no_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _use_bf16(config: TrainConfig, device: torch.device) -> bool:
    if config.precision != "auto":
        return config.precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bf16_supported()


def _make_optimizer(config: TrainConfig, net: Network, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
    """The optimiser, its scheduler (or None), and whether the scheduler steps per batch."""
    params = net.parameters()
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True
        )
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adadelta(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.scheduler == "step":
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7), False
    if config.scheduler == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch), True
    if config.scheduler == "onecycle":
        return (
            opt,
            torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=config.lr,
                epochs=config.epochs,
                steps_per_epoch=steps_per_epoch,
                cycle_momentum=config.optimizer == "sgd",
            ),
            True,
        )
    return opt, None, False


def evaluate(
    net: Network, images: torch.Tensor, labels: torch.Tensor, batch_size: int, bf16: bool = False
) -> tuple[float, float]:
    """(mean nll loss, accuracy) of ``net`` on normalised ``images`` (n, 1, 28, 28)."""
    net.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(images), batch_size):
            out = net(images[i : i + batch_size]).float()
            y = labels[i : i + batch_size]
            total_loss += F.nll_loss(out, y, reduction="sum")
            correct += (out.argmax(dim=1) == y).sum()
    n = len(images)
    return float(total_loss) / n, int(correct) / n


def _new_run_dir(config: TrainConfig) -> Path:
    root = Path(config.output_dir)
    name = config.run_name or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise ConfigError(f"run folder {run_dir} already exists; choose another --run-name or remove it") from None
    except OSError as e:
        raise ConfigError(f"cannot create run folder {run_dir}: {e.strerror}; choose a writable --output-dir") from None
    return run_dir


@dataclass
class _Run:
    """One training run's state: data on the device, network, optimiser, best so far."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    bf16: bool
    x_train: torch.Tensor  # (n, 1, 28, 28) normalised
    y_train: torch.Tensor
    x_test: torch.Tensor  # (m, 1, 28, 28) normalised, channels_last
    y_test: torch.Tensor
    tracker: Tracker
    net: Network = field(init=False)
    history: list[EpochMetrics] = field(default_factory=list)
    best: EpochMetrics | None = None
    sha256: str = ""

    def __post_init__(self) -> None:
        torch.manual_seed(self.config.seed)
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.net = Network().to(self.device).to(memory_format=torch.channels_last)
        steps = math.ceil(len(self.x_train) / self.config.batch_size)
        self.opt, self.sched, self.per_batch = _make_optimizer(self.config, self.net, steps)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training images; returns the mean training loss."""
        cfg, n = self.config, len(self.x_train)
        self.net.train()
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        # one gather per epoch; batches are then views, not per-batch copies
        xs, ys = self.x_train[perm].contiguous(memory_format=torch.channels_last), self.y_train[perm]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for b, i in enumerate(range(0, n, cfg.batch_size)):
            xb, yb = xs[i : i + cfg.batch_size], ys[i : i + cfg.batch_size]
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.net(xb)
            loss = F.nll_loss(out.float(), yb)
            loss.backward()
            self.opt.step()
            if self.per_batch:
                self.sched.step()
            loss_sum += loss.detach() * len(yb)
            if log.isEnabledFor(logging.DEBUG) and b % cfg.log_interval == 0:
                log.debug("epoch %d [%d/%d] loss %.6f", epoch, i + len(yb), n, loss.item())
        if self.sched is not None and not self.per_batch:
            self.sched.step()
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingError(f"training diverged in epoch {epoch} (loss is {train_loss}); lower --lr")
        return train_loss

    def finish_epoch(self, epoch: int, train_loss: float, started: float) -> EpochMetrics:
        """Evaluate, record the metrics, and save the weights when they are the best yet."""
        # evaluated in fp32, as the model is served, so serving reproduces this accuracy
        test_loss, acc = evaluate(self.net, self.x_test, self.y_test, self.config.test_batch_size)
        m = EpochMetrics(epoch, train_loss, test_loss, acc, time.perf_counter() - started)
        self.history.append(m)
        self.tracker.log_metrics(
            epoch, {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": acc, "seconds": m.seconds}
        )
        improved = self.best is None or acc > self.best.test_accuracy
        log.info(
            "epoch %d/%d  train loss %.4f  test loss %.4f  accuracy %.2f%%  %.1fs%s",
            epoch,
            self.config.epochs,
            train_loss,
            test_loss,
            100 * acc,
            m.seconds,
            "  *best" if improved else "",
        )
        if improved:
            self.best = m
            self.sha256 = save_artifact(
                self.run_dir / "model",
                self.net.state_dict(),
                train_config=asdict(self.config),
                metrics={
                    "epoch": epoch,
                    "test_accuracy": acc,
                    "test_loss": test_loss,
                    "train_loss": train_loss,
                    "test_samples": len(self.x_test),
                },
                run={"id": self.run_dir.name, "best_epoch": epoch},
            )
        return m


def _open_run(config: TrainConfig, data: MNISTData) -> _Run:
    """Create the run folder, write its config, move the data to the device."""
    run_dir = _new_run_dir(config)
    device = _device(config)
    bf16 = _use_bf16(config, device)
    meta = {
        "config": asdict(config),
        "device": device.type,
        "bf16": bf16,
        "pid": os.getpid(),
        "versions": {"mnistkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    write_atomic(run_dir / "config.json", json.dumps(meta, indent=2, sort_keys=True) + "\n", error=TrainingError)
    tracker, _ = open_tracker(run_dir)
    tracker.log_params(asdict(config))
    n_train = min(config.train_samples or len(data.train_images), len(data.train_images))
    n_test = min(config.test_samples or len(data.test_images), len(data.test_images))
    log.info(
        "training on %d images (%d test), %d epochs, batch %d, %s lr %g%s, %s%s",
        n_train,
        n_test,
        config.epochs,
        config.batch_size,
        config.optimizer,
        config.lr,
        f" momentum {config.momentum}" if config.optimizer == "sgd" else "",
        device.type,
        " bf16" if bf16 else "",
    )
    return _Run(
        config,
        run_dir,
        device,
        bf16,
        x_train=preprocess(data.train_images[:n_train]).to(device),
        y_train=data.train_labels[:n_train].to(device),
        x_test=preprocess(data.test_images[:n_test]).to(device).contiguous(memory_format=torch.channels_last),
        y_test=data.test_labels[:n_test].to(device),
        tracker=tracker,
    )


def fit(
    config: TrainConfig, data: MNISTData | None = None, *, on_epoch: Callable[[EpochMetrics], None] | None = None
) -> RunResult:
    """Train the seed network as ``config`` says; return where the run went and how well it did.

    ``data`` may be passed in to share one loaded copy between runs (tests, benchmarks).
    """
    config.validate()
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _open_run(config, data if data is not None else load_mnist(config.data_dir, download=config.download))
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            m = run.finish_epoch(epoch, run.train_epoch(epoch), t0)
            if on_epoch:
                on_epoch(m)
    finally:
        run.tracker.close()
    assert run.best is not None  # epochs >= 1
    result = RunResult(
        run_dir=run.run_dir,
        run_id=run.run_dir.name,
        best_epoch=run.best.epoch,
        best_accuracy=run.best.test_accuracy,
        best_test_loss=run.best.test_loss,
        artifact=run.run_dir / "model",
        artifact_sha256=run.sha256,
        epochs=run.history,
        seconds=time.perf_counter() - started,
    )
    # written last and atomically: a run folder with a result.json is a finished run
    write_atomic(
        run.run_dir / "result.json", json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n", error=TrainingError
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m mnistkit.train --config FILE [--error-file FILE]``: run one saved config.

    An expected failure is written to the error file as ``{"error", "type"}`` and exits 1."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mnistkit.train", description=main.__doc__)
    parser.add_argument("--config", required=True, help="a TrainConfig as JSON")
    parser.add_argument("--error-file", help="where to write the error of an expected failure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        fit(TrainConfig.load(args.config))
    except MnistkitError as e:
        if args.error_file:
            try:
                Path(args.error_file).write_text(json.dumps({"error": str(e), "type": type(e).__name__}) + "\n")
            except OSError:
                pass  # a full disk: the search reads the error from the trial's output instead
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
