"""The public Python API is an explicit __all__; changing it is a decision, not an accident."""

from __future__ import annotations

import shipyard

PUBLIC = ["Settings", "__version__", "create_app", "load_settings", "Client", "observe"]


def test_public_api_is_exactly_this() -> None:
    assert sorted(shipyard.__all__) == sorted(PUBLIC)
    for name in shipyard.__all__:
        assert hasattr(shipyard, name), name


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, shipyard; print(int('torch' in sys.modules), int('transformers' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"], "importing shipyard must not import torch or transformers"
