"""Settings: every MNISTKIT_* variable is a typed field, read when used, documented in the README."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mnistkit.errors import ConfigError
from mnistkit.settings import Settings, settings
from support import REPO


def test_defaults_and_reading_the_environment_at_call_time(monkeypatch):
    assert settings().max_batch == 256 and settings().runtime == "auto"
    monkeypatch.setenv("MNISTKIT_MAX_BATCH", "32")
    monkeypatch.setenv("MNISTKIT_METRICS_INTERVAL", "0.5")
    monkeypatch.setenv("MNISTKIT_HOME", "~/elsewhere")
    s = settings()
    assert s.max_batch == 32 and s.metrics_interval == 0.5 and s.home_path.name == "elsewhere"


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MNISTKIT_MAX_BATCH", "lots")
    with pytest.raises(ConfigError, match="MNISTKIT_MAX_BATCH='lots' is not a valid int"):
        settings()


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("MNISTKIT_POLYAXON", "false", "MNISTKIT_POLYAXON='false': use one of auto, on, offline, off"),
        ("MNISTKIT_RUNTIME", "tensorrt", "MNISTKIT_RUNTIME='tensorrt': use one of auto, onnx, torch"),
        ("MNISTKIT_THREADS", "-3", "MNISTKIT_THREADS=-3 must be at least 1"),
        ("MNISTKIT_MAX_BATCH", "0", "MNISTKIT_MAX_BATCH=0 must be at least 1"),
        ("MNISTKIT_METRICS_INTERVAL", "-1", "MNISTKIT_METRICS_INTERVAL=-1.0 must be 0 or more"),
        ("MNISTKIT_METRICS_INTERVAL", "inf", "MNISTKIT_METRICS_INTERVAL=inf must be 0 or more, under a day"),
        ("MNISTKIT_BODY_TIMEOUT", "0", "MNISTKIT_BODY_TIMEOUT=0.0 must be more than 0 and under a day"),
        ("MNISTKIT_BODY_TIMEOUT", "nan", "MNISTKIT_BODY_TIMEOUT=nan must be more than 0"),
        ("MNISTKIT_BODY_TIMEOUT", "inf", "MNISTKIT_BODY_TIMEOUT=inf must be more than 0"),
        ("MNISTKIT_HOST", "localhost:1", "MNISTKIT_HOST='localhost:1' is not an IP address"),
    ],
)
def test_a_value_of_the_right_type_that_nothing_can_use_is_refused(monkeypatch, variable, value, message):
    """Before, MNISTKIT_POLYAXON=false read as "report to Polyaxon" when managed, and a zero
    batch limit refused every request."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings()
    monkeypatch.delenv(variable)
    monkeypatch.setenv("MNISTKIT_POLYAXON", "OFF")  # the case never mattered
    assert settings().polyaxon == "OFF"


def test_nothing_reads_mnistkit_variables_outside_settings():
    """One place: no module but settings.py reads os.environ['MNISTKIT_...'] itself."""
    offenders = []
    for path in (REPO / "mnistkit").rglob("*.py"):
        if path.name == "settings.py":
            continue
        if re.search(r"environ(?:\.get)?[\[(]\s*[\"']MNISTKIT_", path.read_text()):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_importing_mnistkit_reads_no_setting(monkeypatch):
    code = "import os; os.environ['MNISTKIT_MAX_BATCH'] = 'bad'; import mnistkit, mnistkit.serving, mnistkit.build.builder_image"
    subprocess.run([sys.executable, "-c", code], check=True)  # a bad value only fails when it is used


def test_the_readme_documents_every_variable():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `(MNISTKIT_[A-Z_]+)` \|", readme, re.M))
    assert documented == {name for name, _, _ in Settings.variables()}
