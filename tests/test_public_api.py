"""The public surface: mnistkit.__all__ and each module's __all__ are exactly what they define."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import mnistkit

#: modules that import MLServer, which lives in its own venv: checked there (tests/test_serving_v2.py)
NEEDS_MLSERVER = {"mnistkit.serving_v2"}
MODULES = [
    info.name for info in pkgutil.walk_packages(mnistkit.__path__, "mnistkit.") if info.name not in NEEDS_MLSERVER
]


def test_top_level_all_resolves():
    for name in mnistkit.__all__:
        assert getattr(mnistkit, name) is not None, name


def test_top_level_exports_every_error_and_the_documented_entry_points():
    errors = {n for n in dir(mnistkit.errors) if n.endswith("Error") and not n.startswith("_")}
    entry_points = {"TrainConfig", "Settings", "ImageRef", "fit", "load_mnist", "load_model", "preprocess", "Network"}
    assert errors | entry_points | {"__version__"} <= set(mnistkit.__all__)


@pytest.mark.parametrize("module", MODULES)
def test_a_modules_all_is_what_it_defines(module):
    """Every name in __all__ exists, and every public class or function the module defines is in __all__."""
    m = importlib.import_module(module)
    exported = set(getattr(m, "__all__", []))
    assert all(hasattr(m, name) for name in exported), module
    defined = {
        n
        for n, v in vars(m).items()
        if not n.startswith("_")
        and (inspect.isclass(v) or inspect.isfunction(v))
        and getattr(v, "__module__", None) == module
    }
    if module.startswith("mnistkit.cli"):
        return  # commands are entry points, not an API
    assert defined - exported == set(), f"{module}: public but not in __all__"
