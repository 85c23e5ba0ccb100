"""Every name a package exports is what its docstring says it is, never a submodule that shares
its name (shards/exports.py), and importing a package imports nothing heavy."""
import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import pytest

PACKAGES = ["shards", "preprocess", "pipeline", "train", "demo"]


def _exported(package):
    pkg = importlib.import_module(package)
    return pkg, list(getattr(pkg, "__all__", []))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_export_is_a_submodule(package):
    pkg, names = _exported(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not (set(names) & submodules), f"{package} exports names of its submodules"
    for m in submodules:  # also after every submodule has been imported
        importlib.import_module(f"{package}.{m}")
    for name in names:
        value = getattr(pkg, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"


@pytest.mark.parametrize("package", PACKAGES)
def test_exports_are_documented_callables_or_constants(package):
    pkg, names = _exported(package)
    for name in names:
        value = getattr(pkg, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{package}.{name} has no docstring"
        else:  # a constant, named as one
            assert name.isupper() and not callable(value), f"{package}.{name}: {value!r}"


def test_importing_the_packages_imports_nothing_heavy():
    code = ("import sys; import shards, preprocess, pipeline, train, demo, alexnet_cli; "
            "print(sorted(m for m in ('torch', 'numpy', 'nvidia.dali', 'PIL', 'boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
