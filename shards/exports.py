"""Lazy package exports (PEP 562), the one style every package of this project uses: a name is
imported from its module on first use, so `alexnet --help` imports no numpy, torch or DALI.

No exported name may also be a submodule's name: once `pkg.sub` is imported, Python binds the
module to `pkg.sub`, and `from pkg import sub` would then return the module (tests/test_exports.py
checks every package).
"""
import importlib


def lazy_exports(package: str, exports: dict):
    """The `__getattr__` and `__dir__` of `package`, resolving `exports` (name -> module path)."""
    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(importlib.import_module(package), name, value)  # resolved once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(exports) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
