"""fit(config) -> RunResult: the training loop, on the whole data set held in memory.

Per epoch: one random permutation, batches sliced from one normalised tensor
(channels_last, bf16 autocast where the CPU has native bf16; optionally each image moved
by a random shift of up to ``shift`` pixels), then a full evaluation on the test set
(every epoch, or the last ``eval_last`` only). The best evaluated epoch's weights (by
test accuracy) are kept as the run's artifact, written atomically each time they improve.

The same config gives the same artifact, byte for byte, on the same machine and thread
count: seeded generators only, oneDNN's deterministic kernels on the CPU, and a manifest
with neither a timestamp nor where the run was written (a folder name given with
``run_name`` is kept; a generated one is not).

``python -m mnistkit.train --config FILE`` runs one saved ``TrainConfig``: that is how a
search runs its trials, each reporting through its run folder's ``result.json`` (and an
error file when it fails), never through its output.
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import json
import logging
import math
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: worker threads that spin while they wait make each step
# 4-25x slower (measured) when another process holds one of the cores, as on the 2-core
# machines shared with builds and test suites that mnistkit trains on; sleeping costs a
# few percent on an idle machine. Only where nobody chose otherwise, and only when torch
# is not loaded yet (as in mnistkit-train and a search's trials).
if "torch" not in sys.modules:  # (once loaded, OpenMP has read it; only child processes would)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from ._version import __version__
from .artifact import save_artifact
from .config import TrainConfig
from .data import MNISTData, load_mnist, preprocess
from .errors import ConfigError, MnistkitError, TrainingError
from .files import write_atomic
from .network import Network
from .optim import make_optimizer
from .settings import settings
from .tracking import Tracker, open_tracker

__all__ = [
    "TrainConfig",
    "RunResult",
    "EpochMetrics",
    "fit",
    "evaluate",
    "bf16_supported",
    "skip_final_collection",
    "main",
]

log = logging.getLogger(__name__)

#: Config fields that say where a run reads and writes, not what it trains: kept out of the
#: artifact's manifest, so the same training gives the same bytes wherever it ran.
_LOCATION = ("data_dir", "output_dir")


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    test_loss: float | None  # None: not evaluated (``eval_last``)
    test_accuracy: float | None
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
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--output-dir {root} is a file, not a folder; name a folder for the runs")
    if root.is_symlink() and not root.exists():
        raise ConfigError(
            f"--output-dir {root} is a link to {os.readlink(root)}, which does not exist; fix or remove it"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise ConfigError(f"run folder {run_dir} already exists; choose another --run-name or remove it") from None
    except OSError as e:
        fix = "choose a shorter --run-name" if e.errno == errno.ENAMETOOLONG else "choose a writable --output-dir"
        raise ConfigError(f"cannot create run folder {run_dir}: {e.strerror}; {fix}") from None
    return run_dir


@dataclass
class _Run:
    """One training run's state: data on the device, network, optimiser, best so far."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    bf16: bool
    x_train: torch.Tensor  # (n, 1, 28 + 2 shift, 28 + 2 shift) normalised, bf16 under bf16 autocast
    y_train: torch.Tensor
    x_test: torch.Tensor  # (m, 1, 28, 28) normalised, channels_last
    y_test: torch.Tensor
    tracker: Tracker
    net: Network = field(init=False)
    history: list[EpochMetrics] = field(default_factory=list)
    best: EpochMetrics | None = None
    sha256: str = ""
    made: Path | None = None  # the outermost folder of --output-dir that this run created

    def __post_init__(self) -> None:
        torch.manual_seed(self.config.seed)
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.net = Network().to(self.device).to(memory_format=torch.channels_last)
        steps = math.ceil(len(self.x_train) / self.config.batch_size)
        self.opt, self.sched = make_optimizer(self.config, self.net.parameters(), steps)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training images; returns the mean training loss."""
        cfg, n = self.config, len(self.x_train)
        self.net.train()
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        ys = self.y_train[perm]
        if not cfg.shift:  # one gather per epoch; batches are then views, not per-batch copies
            xs = self.x_train[perm].contiguous(memory_format=torch.channels_last)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for b, i in enumerate(range(0, n, cfg.batch_size)):
            if cfg.shift:  # gathered and shifted per batch, while it is in cache
                xb = _shifted(self.x_train[perm[i : i + cfg.batch_size]], cfg.shift, i)
                xb = xb.contiguous(memory_format=torch.channels_last)
            else:
                xb = xs[i : i + cfg.batch_size]
            yb = ys[i : i + cfg.batch_size]
            self.opt.zero_grad()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.net(xb)
            out = out.float()  # (batch, 10) log-probabilities
            loss = F.nll_loss(out, yb)
            if cfg.label_smoothing:  # (1 - e) * nll + e * mean over classes of -log p
                loss = (1 - cfg.label_smoothing) * loss - cfg.label_smoothing * out.mean(dim=1).mean()
            loss.backward()
            self.opt.step()
            if self.sched is not None and self.sched.per_batch:
                self.sched.step()
            loss_sum += loss.detach() * len(yb)
            if log.isEnabledFor(logging.DEBUG) and b % cfg.log_interval == 0:
                log.debug("epoch %d [%d/%d] loss %.6f", epoch, i + len(yb), n, loss.item())
        if self.sched is not None and not self.sched.per_batch:
            self.sched.step()
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingError(f"training diverged in epoch {epoch} (loss is {train_loss}); lower --lr")
        return train_loss

    def finish_epoch(self, epoch: int, train_loss: float, started: float) -> EpochMetrics:
        """Evaluate (unless ``eval_last`` skips this epoch), record the metrics, and save the
        weights when they are the best yet."""
        cfg = self.config
        test_loss = acc = None
        if epoch > cfg.epochs - (cfg.eval_last or cfg.epochs):
            # evaluated in fp32, as the model is served, so serving reproduces this accuracy
            test_loss, acc = evaluate(self.net, self.x_test, self.y_test, cfg.test_batch_size)
        m = EpochMetrics(epoch, train_loss, test_loss, acc, time.perf_counter() - started)
        self.history.append(m)
        row = {"train_loss": train_loss, "seconds": m.seconds}
        if test_loss is not None and acc is not None:
            row.update(test_loss=test_loss, test_accuracy=acc)
        self.tracker.log_metrics(epoch, row)
        improved = acc is not None and (self.best is None or acc > (self.best.test_accuracy or 0.0))
        log.info(
            "epoch %d/%d  train loss %.4f  %s  %.1fs%s",
            epoch,
            cfg.epochs,
            train_loss,
            "not evaluated" if acc is None else f"test loss {test_loss:.4f}  accuracy {100 * acc:.2f}%",
            m.seconds,
            "  *best" if improved else "",
        )
        if improved:
            # the training, not where it ran: no data/output folders, no generated run name
            self.sha256 = save_artifact(
                self.run_dir / "model",
                self.net.state_dict(),
                train_config={k: v for k, v in asdict(cfg).items() if k not in _LOCATION},
                metrics={
                    "epoch": epoch,
                    "test_accuracy": acc,
                    "test_loss": test_loss,
                    "train_loss": train_loss,
                    "test_samples": len(self.x_test),
                },
                run={**({"id": self.run_dir.name} if cfg.run_name else {}), "best_epoch": epoch},
            )
            self.best = m  # once saved: a failed save leaves the previous best as the best
        return m


def _pad(images: torch.Tensor, background: float, k: int) -> torch.Tensor:
    """(n, 1, h, w) -> (n, 1, h + 2k, w + 2k) with a ``background`` border."""
    n, c, h, w = images.shape
    padded = images.new_full((n, c, h + 2 * k, w + 2 * k), background)
    padded[:, :, k : k + h, k : k + w] = images
    return padded


def _shifted(padded: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    """Crop a batch of (n, 1, h + 2k, w + 2k) images, taken in the epoch's random order, to
    (n, 1, h, w), moving the image at position ``start + j`` of that order by the
    ``(start + j) mod (2k+1)²``-th of the (2k+1)² offsets in [-k, k]². The order being a
    fresh permutation each epoch, each image gets a random shift each epoch, and each batch
    holds all shifts in (nearly) equal parts. (2k+1)² strided copies, no index gathers."""
    n, c, hp, wp = padded.shape
    h, w, m = hp - 2 * k, wp - 2 * k, (2 * k + 1) ** 2
    out = padded.new_empty((n, c, h, w))
    for o in range(m):
        dy, dx = divmod(o, 2 * k + 1)
        first = (o - start) % m
        out[first::m] = padded[first::m, :, dy : dy + h, dx : dx + w]
    return out


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (the first a run makes)."""
    missing, p = None, Path(os.path.abspath(folder))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing, p = p, p.parent
    return missing


def _remove_run(run_dir: Path, made: Path | None) -> None:
    """Remove a run folder and, innermost first, the empty folders the run made above it up to
    ``made`` (an --output-dir it created), unless another run went there meanwhile."""
    shutil.rmtree(run_dir, ignore_errors=True)
    _remove_made(run_dir.parent, made)


def _remove_made(folder: Path, made: Path | None) -> None:
    """Remove ``folder`` and its parents, innermost first, while empty and inside ``made``."""
    p = Path(os.path.abspath(folder))
    while made is not None and p.is_relative_to(made):
        try:
            p.rmdir()
        except OSError:  # not empty: something else is in it
            return
        p = p.parent


def _open_run(config: TrainConfig, data: MNISTData) -> _Run:
    """Create the run folder, write its config, move the data to the device."""
    settings()  # a bad MNISTKIT_* value is refused before any folder is made
    made = _outermost_missing(Path(config.output_dir))
    try:
        run_dir = _new_run_dir(config)
    except BaseException:  # (the --output-dir was made, the run folder could not be)
        _remove_made(Path(config.output_dir), made)
        raise
    try:
        run = _prepare_run(config, data, run_dir)
    except BaseException:  # a full disk, Ctrl-C: no run folder with only part of its files
        _remove_run(run_dir, made)  # nor the --output-dir folders this run made
        raise
    run.made = made
    return run


def _prepare_run(config: TrainConfig, data: MNISTData, run_dir: Path) -> _Run:
    device = _device(config)
    bf16 = _use_bf16(config, device)
    meta = {
        "config": asdict(config),
        "device": device.type,
        "bf16": bf16,
        "threads": torch.get_num_threads(),  # part of what the weights depend on, bit for bit
        "pid": os.getpid(),
        "versions": {"mnistkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    write_atomic(run_dir / "config.json", json.dumps(meta, indent=2, sort_keys=True) + "\n", error=TrainingError)
    tracker, _ = open_tracker(run_dir)
    try:
        return _place_data(config, data, run_dir, device, bf16, tracker)
    except BaseException:
        tracker.close()  # before the folder goes
        raise


def _place_data(
    config: TrainConfig, data: MNISTData, run_dir: Path, device: torch.device, bf16: bool, tracker: Tracker
) -> _Run:
    """Log the run's start, move its images to the device (as the first layer reads them)."""
    tracker.log_params(asdict(config))
    n_train = min(config.train_samples or len(data.train_images), len(data.train_images))
    n_test = min(config.test_samples or len(data.test_images), len(data.test_images))
    log.info(
        "training on %d images (%d test), %d epoch%s, batch %d, %s lr %g%s, %s%s",
        n_train,
        n_test,
        config.epochs,
        "" if config.epochs == 1 else "s",
        config.batch_size,
        config.optimizer,
        config.lr,
        f" momentum {config.momentum}" if config.optimizer == "sgd" else "",
        device.type,
        " bf16" if bf16 else "",
    )
    # Training images are kept as the first layer computes on them: bf16 under bf16
    # autocast (the cast autocast would make of every batch, made once: the same values).
    x_train = preprocess(data.train_images[:n_train]).to(device, torch.bfloat16 if bf16 else torch.float32)
    if config.shift:  # a border of background (raw pixel 0) to shift within
        x_train = _pad(x_train, float(preprocess(torch.zeros(1, 1)).flatten()[0]), config.shift)
    return _Run(
        config,
        run_dir,
        device,
        bf16,
        x_train=x_train,
        y_train=data.train_labels[:n_train].to(device),
        x_test=preprocess(data.test_images[:n_test]).to(device).contiguous(memory_format=torch.channels_last),
        y_test=data.test_labels[:n_test].to(device),
        tracker=tracker,
    )


@functools.cache
def skip_final_collection() -> None:
    """For a training process's entry point (``mnistkit-train``, a search's trial): at exit,
    Python's last garbage collection walks every object still alive; torch leaves so many
    that it takes ~0.15 s of a training process (~0.4 s more where torch._dynamo and sympy
    are loaded). Freezing them when the interpreter exits skips that walk. Not done by ``fit``
    itself: in a program of the caller's, objects of its own in reference cycles would then
    not be finalised at exit."""
    atexit.register(gc.freeze)


def fit(
    config: TrainConfig, data: MNISTData | None = None, *, on_epoch: Callable[[EpochMetrics], None] | None = None
) -> RunResult:
    """Train the seed network as ``config`` says; return where the run went and how well it did.

    ``data`` may be passed in to share one loaded copy between runs (tests, benchmarks).
    ``threads`` applies while it trains; the caller's setting, and the state of torch's global
    random generator (which training seeds), are restored afterwards. Training uses torch's
    process-wide state (that generator, threads, oneDNN's mode): run one ``fit`` at a time in a
    process; a search runs its trials as processes.
    """
    config.validate()
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            return _fit(config, data, on_epoch)
    finally:
        if config.threads:
            torch.set_num_threads(before)


def _fit(config: TrainConfig, data: MNISTData | None, on_epoch: Callable[[EpochMetrics], None] | None) -> RunResult:
    started = time.perf_counter()
    run = _open_run(config, data if data is not None else load_mnist(config.data_dir, download=config.download))
    # oneDNN (convolutions, matmuls) may pick kernels that are not run-to-run reproducible
    # (atomics) unless asked for deterministic ones: on the CPU, ask; restored afterwards.
    mkldnn_deterministic = bool(torch.backends.mkldnn.deterministic)
    torch.backends.mkldnn.deterministic = mkldnn_deterministic or run.device.type == "cpu"  # type: ignore[assignment]
    epoch = 0
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            m = run.finish_epoch(epoch, run.train_epoch(epoch), t0)
            if on_epoch:
                on_epoch(m)
    except BaseException:
        torch.backends.mkldnn.deterministic = mkldnn_deterministic  # type: ignore[assignment]
        run.tracker.close()  # before the folder may go
        _stopped(run, epoch)
        raise
    torch.backends.mkldnn.deterministic = mkldnn_deterministic  # type: ignore[assignment]
    run.tracker.close()
    # the last epoch is always evaluated
    assert run.best is not None and run.best.test_accuracy is not None and run.best.test_loss is not None
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


def _stopped(run: _Run, epoch: int) -> None:
    """A run that stopped early (Ctrl-C, a diverged loss, a full disk): a run folder without a
    saved model is removed, so nothing half-made is left; one whose best epoch so far was saved
    (atomically, a complete model) is kept, without result.json (it did not finish), and said so."""
    best = run.best
    if best is None or best.test_accuracy is None or not run.sha256:
        _remove_run(run.run_dir, run.made)
        return
    log.warning(
        "stopped during epoch %d: the best epoch so far (%d, accuracy %.2f%%) is kept in %s",
        epoch,
        best.epoch,
        100 * best.test_accuracy,
        run.run_dir / "model",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m mnistkit.train --config FILE [--error-file FILE]``: run one saved config.

    An expected failure is written to the error file as ``{"error", "type"}`` and exits 1."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mnistkit.train", description=main.__doc__)
    parser.add_argument("--config", required=True, help="a TrainConfig as JSON")
    parser.add_argument("--error-file", help="where to write the error of an expected failure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    skip_final_collection()
    try:
        fit(TrainConfig.load(args.config))
    except MnistkitError as e:
        if args.error_file:
            try:
                error = json.dumps({"error": str(e), "type": type(e).__name__}) + "\n"
                write_atomic(Path(args.error_file), error, error=TrainingError)
            except MnistkitError:
                pass  # a full disk: the search reads the error from the trial's output instead
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
