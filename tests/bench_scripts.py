"""bench/ scripts as modules, for the tests that check the claims their figures rest on.

bench/ is not a package (its scripts run as ``python bench/x.py``), so a test loads one by
path, under the name ``bench_<stem>``, once per session.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_script(stem: str) -> ModuleType:
    """bench/<stem>.py imported as the module ``bench_<stem>``."""
    name = f"bench_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
