"""What a training run depends on, with no torch: ``TrainConfig`` and its option table.

Each field carries its command-line help (and choices) in its metadata, so
``mnistkit-train`` is built from this table, a search checks a trial's flags against it,
and a trial process receives its config as a JSON file, never as re-parsed flags.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_atomic

__all__ = [
    "TrainConfig",
    "Option",
    "OPTIONS",
    "flag",
    "OPTIMIZERS",
    "SCHEDULERS",
    "PRECISIONS",
    "RECIPES",
    "PLACEMENT",
    "MACHINE",
]

OPTIMIZERS = ("sgd", "adam", "adadelta")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
#: Fields that say where a run goes rather than how it trains: a search decides them.
PLACEMENT = ("output_dir", "run_name")
#: Fields that belong to the machine a run went on, not to its training: a saved config's are
#: not carried to another run (``mnistkit-train --config``).
MACHINE = (*PLACEMENT, "data_dir")


#: the most threads a run may ask for (more fail in OpenMP, or crash it, before training starts)
MAX_THREADS = 1024
#: the largest float32: a learning rate or weight decay beyond it cannot reach torch's parameters
FLOAT32_MAX = 3.4028234663852886e38


def _opt(default: Any, help: str, *, choices: Sequence[str] | None = None, env: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None, "env": env})


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved as the run's ``config.json``.

    The first eight fields are the 2018 script's flags with its defaults.
    """

    batch_size: int = _opt(64, "Training batch size.")
    test_batch_size: int = _opt(1000, "Evaluation batch size.")
    epochs: int = _opt(10, "Epochs to train.")
    lr: float = _opt(0.01, "Learning rate (peak rate with --scheduler onecycle).")
    momentum: float = _opt(0.5, "SGD momentum.")
    no_cuda: bool = _opt(False, "Train on the CPU even when CUDA is available.")
    seed: int = _opt(1, "Random seed.")
    log_interval: int = _opt(10, "Batches between debug log lines (-v).")
    data_dir: str | None = _opt(None, "Folder holding MNIST/raw/ [default: ./examples/data].", env="MNISTKIT_DATA_DIR")
    output_dir: str = _opt("runs", "Where run folders go.")
    run_name: str | None = _opt(None, "Name of the run folder (default: run-<time>-<random>).")
    train_samples: int | None = _opt(None, "Use only the first N training images (quick runs).")
    test_samples: int | None = _opt(None, "Evaluate on only the first N test images.")
    optimizer: str = _opt("sgd", "Optimiser.", choices=OPTIMIZERS)
    scheduler: str = _opt("none", "Learning-rate schedule.", choices=SCHEDULERS)
    weight_decay: float = _opt(0.0, "Weight decay.")
    precision: str = _opt("auto", "auto: bf16 autocast where the CPU has native bf16.", choices=PRECISIONS)
    threads: int | None = _opt(None, "Torch threads (default: all cores).")
    download: bool = _opt(False, "Download MNIST with torchvision when it is missing (needs network).")
    label_smoothing: float = _opt(0.0, "Label smoothing of the training loss (0: none).")
    shift: int = _opt(0, "Shift each training image by up to N pixels at random, per epoch (augmentation; 0: none).")
    eval_last: int | None = _opt(None, "Evaluate, and keep the best of, only the last N epochs (default: every epoch).")

    def validate(self) -> "TrainConfig":
        """Raise ``ConfigError`` naming the first bad value; return self."""
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"--run-name must be a plain folder name (got {self.run_name!r})")
        return self

    def _checks(self) -> list[tuple[bool, str]]:
        at_least_one = (
            "batch_size",
            "test_batch_size",
            "epochs",
            "log_interval",
            "train_samples",
            "test_samples",
            "threads",
            "eval_last",
        )
        checks = [
            (
                getattr(self, n) is None or getattr(self, n) >= 1,
                f"{flag(n)} must be at least 1 (got {getattr(self, n)})",
            )
            for n in at_least_one
        ]
        for o in OPTIONS.values():
            if o.choices and getattr(self, o.name) not in o.choices:
                checks.append(
                    (False, f"{o.flag} must be one of {', '.join(o.choices)} (got {getattr(self, o.name)!r})")
                )
        return checks + [
            (0 <= self.seed < 2**63, f"--seed must be 0 .. 2^63-1 (got {self.seed})"),
            (
                self.threads is None or self.threads <= MAX_THREADS,
                f"--threads must be at most {MAX_THREADS} (got {self.threads})",
            ),
            (self.data_dir != "", "--data-dir is empty: name the folder holding MNIST/raw/, or leave the flag out"),
            (self.output_dir != "", "--output-dir is empty: name a folder, or leave the flag out for ./runs"),
            (
                math.isfinite(self.lr) and 0 < self.lr <= FLOAT32_MAX,
                f"--lr must be a positive number torch can hold in float32 (got {self.lr})",
            ),
            (
                math.isfinite(self.momentum) and 0 <= self.momentum < 1,
                f"--momentum must be in [0, 1) (got {self.momentum})",
            ),
            (
                math.isfinite(self.weight_decay) and 0 <= self.weight_decay <= FLOAT32_MAX,
                f"--weight-decay must be >= 0 and a number torch can hold in float32 (got {self.weight_decay})",
            ),
            (
                math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (0 <= self.shift <= 8, f"--shift must be 0..8 pixels (got {self.shift})"),
        ]

    # -- files and flags --------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """From a saved config, or a run folder's ``config.json`` (which holds one under
        ``config`` beside what the run ran on); unknown keys are refused (a file from another
        version)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config is a JSON object, not {type(data).__name__}")
        # a run's record ("config" is no option); the rest of it says where the run went
        if isinstance(data.get("config"), Mapping):
            data = data["config"]
        unknown = sorted(set(data) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown training option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
        return cls(**{k: OPTIONS[k].coerce(v) for k, v in data.items()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TrainConfig":
        """From a file ``save`` wrote, a run folder's ``config.json``, or the run folder."""
        if not os.fspath(path):
            raise ConfigError("the training config path is empty: name a run folder or a config file")
        if Path(path).is_dir():
            path = Path(path) / "config.json"
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the training config {path}: {e}") from None
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n", error=ConfigError)

    def to_args(self, names: Sequence[str] | None = None) -> list[str]:
        """Command-line flags for ``names`` (default: every field that differs from its default)."""
        out = []
        for name in names if names is not None else [n for n, o in OPTIONS.items() if getattr(self, n) != o.default]:
            out += OPTIONS[name].to_args(getattr(self, name))
        return out

    @classmethod
    def parse_args(cls, args: Sequence[str], *, allowed: Sequence[str] | None = None) -> dict[str, Any]:
        """Parse ``--flag value`` / ``--flag=value`` / ``--switch`` training flags into field
        values, refusing anything that is not a training option (or not in ``allowed``)."""
        values: dict[str, Any] = {}
        by_flag = {o.flag: o for o in OPTIONS.values() if allowed is None or o.name in allowed}
        words = list(args)
        while words:
            word = words.pop(0)
            name, eq, value = word.partition("=")
            option = by_flag.get(name)
            if option is None:
                raise ConfigError(f"{name} is not a training option; use one of {', '.join(sorted(by_flag))}")
            if option.type is bool:
                if eq:
                    raise ConfigError(f"{name} is a switch and takes no value")
                values[option.name] = True
                continue
            if not eq:
                if not words:
                    raise ConfigError(f"{name} needs a value")
                value = words.pop(0)
            values[option.name] = option.parse(value)
        return values

    def with_values(self, values: Mapping[str, Any]) -> "TrainConfig":
        return replace(self, **values)


@dataclass(frozen=True)
class Option:
    """One row of the option table: a ``TrainConfig`` field as a command-line flag."""

    name: str
    type: type
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...] | None
    env: str | None

    @property
    def flag(self) -> str:
        return flag(self.name)

    def parse(self, text: str) -> Any:
        if self.optional and text.lower() in ("none", ""):
            return None
        try:
            value = self.type(text)
        except ValueError:
            raise ConfigError(
                f"{self.flag} needs {'an integer' if self.type is int else 'a number'}, got {text!r}"
            ) from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.flag} must be one of {', '.join(self.choices)} (got {text!r})")
        return value

    def coerce(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(f"training option {self.name} must be {self.type.__name__}, got {value!r}")
        return value

    def to_args(self, value: Any) -> list[str]:
        if self.type is bool:
            return [self.flag] if value else []
        return [] if value is None else [f"{self.flag}={value}"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _table() -> dict[str, Option]:
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    table = {}
    for f in fields(TrainConfig):
        text = str(f.type)
        base = text.split("|")[0].strip()
        default = f.default if f.default is not MISSING else None
        table[f.name] = Option(
            f.name, kinds[base], "None" in text, default, f.metadata["help"], f.metadata["choices"], f.metadata["env"]
        )
    return table


#: name -> Option, in field order: the table ``mnistkit-train`` is built from.
OPTIONS: dict[str, Option] = _table()

#: Named sets of values for ``mnistkit-train --recipe NAME``; flags given beside it win.
#: fast99: >= 99.0 % accuracy on all 10,000 test images, in the least wall time found on
#: 2 CPU cores (about 19 s for the whole process on an idle machine; 5 seeds: 99.05-99.18 %).
#: Measured in benchmarks/train_bench.py.
RECIPES: dict[str, dict[str, Any]] = {
    "fast99": {
        "optimizer": "adam",
        "scheduler": "onecycle",
        "lr": 0.008,
        "batch_size": 256,
        "epochs": 12,
        "shift": 1,
        "eval_last": 3,
    },
}
