"""The public API of ``fastshower``: every name in ``__all__`` resolves, lazily (no torch at import)."""

import subprocess
import sys

import fastshower


def test_all_names_resolve_to_their_modules_objects():
    import importlib

    for name, module in fastshower._EXPORTS.items():
        assert getattr(fastshower, name) is getattr(importlib.import_module(module), name), name
    assert set(fastshower.__all__) == {"__version__", *fastshower._EXPORTS}


def test_import_is_lazy_and_unknown_names_fail():
    code = ("import sys, fastshower; assert 'torch' not in sys.modules and 'h5py' not in sys.modules; "
            "fastshower.ShowerSet; assert 'torch' not in sys.modules\n"
            "try:\n    fastshower.no_such_name\nexcept AttributeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "no_such_name" in out
