"""fit(config) -> RunResult: the training loop, on the whole data set held in memory.

Per epoch: one random permutation, batches sliced from one normalised tensor
(channels_last, bf16 autocast where the CPU has native bf16), then a full evaluation on
the test set. The best epoch's weights (by test accuracy) are kept as the run's
artifact, written atomically each time they improve.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import __version__
from .artifact import save_artifact
from .data import MNISTData, load_mnist, preprocess
from .errors import ConfigError, TrainingError
from .network import Network
from .tracking import open_tracker

__all__ = ["TrainConfig", "RunResult", "EpochMetrics", "fit", "OPTIMIZERS", "SCHEDULERS", "PRECISIONS"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adadelta")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved as the run's ``config.json``.

    The first eight fields are the 2018 script's flags with its defaults.
    """

    batch_size: int = 64
    test_batch_size: int = 1000
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.5
    no_cuda: bool = False
    seed: int = 1
    log_interval: int = 10
    data_dir: str | None = None
    output_dir: str = "runs"
    run_name: str | None = None
    train_samples: int | None = None  # cap for quick runs; None = all 60,000
    test_samples: int | None = None  # cap on the evaluation set; None = all 10,000
    optimizer: str = "sgd"
    scheduler: str = "none"
    weight_decay: float = 0.0
    precision: str = "auto"
    threads: int | None = None
    download: bool = False

    def validate(self) -> "TrainConfig":
        """Raise ``ConfigError`` naming the first bad value; return self."""
        checks: list[tuple[bool, str]] = [
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.test_batch_size >= 1, f"--test-batch-size must be at least 1 (got {self.test_batch_size})"),
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number (got {self.lr})"),
            (math.isfinite(self.momentum) and 0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})"),
            (self.log_interval >= 1, f"--log-interval must be at least 1 (got {self.log_interval})"),
            (self.train_samples is None or self.train_samples >= 1, f"--train-samples must be at least 1 (got {self.train_samples})"),
            (self.test_samples is None or self.test_samples >= 1, f"--test-samples must be at least 1 (got {self.test_samples})"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})"),
            (self.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)} (got {self.scheduler!r})"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1 (got {self.threads})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"--run-name must be a plain folder name (got {self.run_name!r})")
        return self


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
    if config.precision == "fp32":
        return False
    if config.precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bf16_supported()


def _make_optimizer(config: TrainConfig, net: Network, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
    params = net.parameters()
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True)
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adadelta(params, lr=config.lr, weight_decay=config.weight_decay)
    per_batch = False
    if config.scheduler == "step":
        sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    elif config.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
        per_batch = True
    elif config.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            cycle_momentum=config.optimizer == "sgd",
        )
        per_batch = True
    else:
        sched = None
    return opt, sched, per_batch


def evaluate(net: Network, images: torch.Tensor, labels: torch.Tensor, batch_size: int, bf16: bool = False) -> tuple[float, float]:
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


def fit(
    config: TrainConfig,
    data: MNISTData | None = None,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> RunResult:
    """Train the seed network as ``config`` says; return where the run went and how well it did.

    ``data`` may be passed in to share one loaded copy between runs (tests, benchmarks).
    """
    config.validate()
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    if data is None:
        data = load_mnist(config.data_dir, download=config.download)
    run_dir = _new_run_dir(config)
    device = _device(config)
    bf16 = _use_bf16(config, device)
    meta = {
        "config": asdict(config),
        "device": device.type,
        "bf16": bf16,
        "versions": {"mnistkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "pid": os.getpid(),
    }
    (run_dir / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tracker, _ = open_tracker(run_dir)
    tracker.log_params(asdict(config))

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    n_train = min(config.train_samples or len(data.train_images), len(data.train_images))
    n_test = min(config.test_samples or len(data.test_images), len(data.test_images))
    x_train = preprocess(data.train_images[:n_train]).to(device)  # (n, 1, 28, 28)
    y_train = data.train_labels[:n_train].to(device)
    x_test = preprocess(data.test_images[:n_test]).to(device).contiguous(memory_format=torch.channels_last)
    y_test = data.test_labels[:n_test].to(device)

    net = Network().to(device).to(memory_format=torch.channels_last)
    steps = math.ceil(n_train / config.batch_size)
    opt, sched, per_batch = _make_optimizer(config, net, steps)
    log.info(
        "training on %d images (%d test), %d epochs, batch %d, %s lr %g%s, %s%s",
        n_train, n_test, config.epochs, config.batch_size, config.optimizer, config.lr,
        f" momentum {config.momentum}" if config.optimizer == "sgd" else "",
        device.type, " bf16" if bf16 else "",
    )

    history: list[EpochMetrics] = []
    best: EpochMetrics | None = None
    sha = ""
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            perm = torch.randperm(n_train, generator=gen).to(device)
            # one gather per epoch; batches are then views, not per-batch copies
            xs, ys = x_train[perm].contiguous(memory_format=torch.channels_last), y_train[perm]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for b, i in enumerate(range(0, n_train, config.batch_size)):
                xb = xs[i : i + config.batch_size]
                yb = ys[i : i + config.batch_size]
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = net(xb)
                loss = F.nll_loss(out.float(), yb)
                loss.backward()
                opt.step()
                if per_batch:
                    sched.step()
                loss_sum += loss.detach() * len(yb)
                if log.isEnabledFor(logging.DEBUG) and b % config.log_interval == 0:
                    log.debug("epoch %d [%d/%d] loss %.6f", epoch, i + len(yb), n_train, loss.item())
            if sched is not None and not per_batch:
                sched.step()
            train_loss = float(loss_sum) / n_train
            if not math.isfinite(train_loss):
                raise TrainingError(f"training diverged in epoch {epoch} (loss is {train_loss}); lower --lr")
            # evaluated in fp32, as the model is served, so serving reproduces this accuracy
            test_loss, acc = evaluate(net, x_test, y_test, config.test_batch_size)
            m = EpochMetrics(epoch, train_loss, test_loss, acc, time.perf_counter() - t0)
            history.append(m)
            tracker.log_metrics(epoch, {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": acc, "seconds": m.seconds})
            improved = best is None or acc > best.test_accuracy
            log.info(
                "epoch %d/%d  train loss %.4f  test loss %.4f  accuracy %.2f%%  %.1fs%s",
                epoch, config.epochs, train_loss, test_loss, 100 * acc, m.seconds, "  *best" if improved else "",
            )
            if improved:
                best = m
                sha = save_artifact(
                    run_dir / "model",
                    net.state_dict(),
                    train_config=asdict(config),
                    metrics={"epoch": epoch, "test_accuracy": acc, "test_loss": test_loss, "train_loss": train_loss, "test_samples": n_test},
                    run={"id": run_dir.name, "best_epoch": epoch},
                )
            if on_epoch:
                on_epoch(m)
    finally:
        tracker.close()
    assert best is not None  # epochs >= 1
    result = RunResult(
        run_dir=run_dir,
        run_id=run_dir.name,
        best_epoch=best.epoch,
        best_accuracy=best.test_accuracy,
        best_test_loss=best.test_loss,
        artifact=run_dir / "model",
        artifact_sha256=sha,
        epochs=history,
        seconds=time.perf_counter() - started,
    )
    (run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return result
