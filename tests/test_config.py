"""TrainConfig's option table: validation, files, and flags parsed without click."""

from __future__ import annotations

import json

import pytest

from mnistkit.config import OPTIONS, TrainConfig
from mnistkit.errors import ConfigError


def test_the_2018_defaults():
    c = TrainConfig()
    assert (c.batch_size, c.test_batch_size, c.epochs, c.lr, c.momentum, c.seed, c.log_interval) == (
        64,
        1000,
        10,
        0.01,
        0.5,
        1,
        10,
    )


def test_saved_and_loaded_unchanged(tmp_path):
    c = TrainConfig(lr=0.1, epochs=3, optimizer="adam", train_samples=100)
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lr": 0.1, "warmup": 3}, "unknown training option warmup"),
        ({"epochs": "3"}, "epochs must be int"),
        ({"epochs": True}, "epochs must be int"),
    ],
)
def test_a_bad_file_is_refused(tmp_path, data, message):
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        TrainConfig.load(tmp_path / "c.json")


@pytest.mark.parametrize(
    "args, values",
    [
        (["--lr=0.1", "--epochs", "3"], {"lr": 0.1, "epochs": 3}),
        (["--no-cuda", "--optimizer=adam"], {"no_cuda": True, "optimizer": "adam"}),
        (["--train-samples=None"], {"train_samples": None}),
    ],
)
def test_flags_parse_into_typed_values(args, values):
    assert TrainConfig.parse_args(args) == values


@pytest.mark.parametrize(
    "args, message",
    [
        (["--export=/etc/passwd"], "--export is not a training option"),
        (["--epochs=three"], "--epochs needs an integer"),
        (["--optimizer=rmsprop"], "--optimizer must be one of sgd, adam, adadelta"),
        (["--no-cuda=1"], "is a switch"),
        (["--lr"], "--lr needs a value"),
    ],
)
def test_bad_flags_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.parse_args(args)


def test_allowed_limits_the_options():
    with pytest.raises(ConfigError, match="--output-dir is not a training option"):
        TrainConfig.parse_args(["--output-dir=/tmp/x"], allowed=["lr"])


def test_flags_round_trip():
    c = TrainConfig(lr=0.2, no_cuda=True, scheduler="onecycle", train_samples=50)
    assert TrainConfig(**TrainConfig.parse_args(c.to_args())) == c


def test_every_field_is_in_the_table_with_help():
    assert list(OPTIONS) == list(TrainConfig.__dataclass_fields__)
    assert all(o.help for o in OPTIONS.values())
