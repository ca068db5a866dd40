import importlib
import pkgutil
import subprocess
import sys

import mnistkit


def test_top_level_all_resolves_and_is_complete():
    for name in mnistkit.__all__:
        assert getattr(mnistkit, name) is not None, name
    errors = [n for n in dir(mnistkit.errors) if n.endswith("Error") and not n.startswith("_")]
    assert set(errors) <= set(mnistkit.__all__)


def test_every_module_all_names_exist():
    for info in pkgutil.walk_packages(mnistkit.__path__, "mnistkit."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{info.name}.{name}"


def test_light_imports():
    # the client, the CLIs' --help, packaging and manifests do not pull in torch
    code = ("import sys, mnistkit, mnistkit.client, mnistkit.packaging, mnistkit.manifests, mnistkit.image, "
            "mnistkit.cli.build, mnistkit.cli.query, mnistkit.cli.train; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
