"""The rooms' import directions that the README states, read from the code (the module-level
and deferred imports alike): the namespace hides them from tools that look for ``import core``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("api", "cli", "client", "core", "service", "store", "worker")
# room -> the rooms of ours it must not import (README, "Imports point one way")
FORBIDDEN = {
    "core": set(ROOMS) - {"core"},
    "api": {"worker", "cli"},
    "worker": {"api", "cli"},
    "store": {"api", "worker", "cli", "client", "core"},
    "client": set(ROOMS) - {"client"},
}


def rooms_imported(path: Path) -> set[str]:
    """The rooms of ours that one file imports, under the embedmix namespace."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "embedmix" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_in_the_stated_direction(room: str) -> None:
    files = sorted((ROOT / room).rglob("*.py"))
    assert files, room
    wrong = {f"{f.relative_to(ROOT)} -> {r}" for f in files for r in rooms_imported(f) & FORBIDDEN[room]}
    assert not wrong, sorted(wrong)


def test_the_reader_sees_the_namespaced_imports() -> None:
    """The check above would pass vacuously if it missed every import: worker does import core."""
    assert "core" in set().union(*(rooms_imported(f) for f in (ROOT / "worker").rglob("*.py")))
