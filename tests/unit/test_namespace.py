"""The installed distributions import under one namespace, ``embedmix``: no room of the
repository (core, api, cli, ...) becomes a top-level module of site-packages, and the client
also ships alone, needing httpx and nothing else."""

from __future__ import annotations

import ast
import email
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.wheels import ROOT, client_wheel, project_wheel

NAMESPACE = "embedmix"
ROOMS = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
SOURCES = (*ROOMS, "tests", "bench")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in one file, module-level and deferred alike."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _bare_room_imports(path: Path) -> list[str]:
    """``import core...`` / ``from api... import`` in one file: each would load a second copy of a module."""
    return [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in _imported_modules(path)
            if name.split(".")[0] in ROOMS]


def _rooms_imported(path: Path) -> set[str]:
    """The rooms of ours that one file imports, under the namespace."""
    return {parts[1] for _, name in _imported_modules(path)
            if len(parts := name.split(".")) > 1 and parts[0] == NAMESPACE}


def _tree_files() -> set[str]:
    """Every file the rooms install, as the wheel names it (embedmix/<room>/...)."""
    files = set()
    for room in ROOMS:
        for path in (ROOT / room).rglob("*"):
            rel = path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc" \
                    and not (room == "client" and path.name == "pyproject.toml"):
                files.add(f"{NAMESPACE}/{rel.as_posix()}")
    return files


def test_no_file_imports_a_room_by_its_bare_name() -> None:
    bare = [hit for source in SOURCES for path in sorted((ROOT / source).rglob("*.py"))
            if "__pycache__" not in path.parts for hit in _bare_room_imports(path)]
    assert bare == [], "import these as embedmix.<room>:\n" + "\n".join(bare)


def test_no_bench_script_hides_a_module_it_runs_beside() -> None:
    """``python bench/x.py`` puts bench/ first on sys.path: a bench/ssl.py there stood in for the
    standard library's ssl (which asyncio and httpx import) in every bench script."""
    hidden = sorted(path.name for path in (ROOT / "bench").glob("*.py")
                    if path.stem in sys.stdlib_module_names or path.stem in ROOMS or path.stem == NAMESPACE)
    assert hidden == []


def test_the_wheel_holds_every_room_under_the_namespace_and_nothing_else(tmp_path: Path) -> None:
    with zipfile.ZipFile(project_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {NAMESPACE}
    assert f"{NAMESPACE}/__init__.py" not in names  # a namespace the client's distribution shares
    missing = _tree_files() - names
    assert not missing, f"not in the wheel (pyproject's packages or package-data): {sorted(missing)}"
    assert f"{NAMESPACE}/api/static/ui/index.html" in names and f"{NAMESPACE}/migrations/env.py" in names


def test_the_client_distribution_is_the_client_and_needs_only_httpx(tmp_path: Path) -> None:
    with zipfile.ZipFile(client_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(wheel.read(meta_name))
    code = [n for n in names if not n.split("/")[0].endswith(".dist-info")]
    assert code and all(n.startswith(f"{NAMESPACE}/client/") for n in code), code
    assert {Path(n).name for n in code} == {p.name for p in (ROOT / "client").glob("*.py")}
    assert meta["Name"] == "embedmix-client"
    assert [r.split(">")[0].split("=")[0].strip() for r in meta.get_all("Requires-Dist")] == ["httpx"]


# room -> the rooms of ours it must not import (README, "Imports point one way"); farm-studio's look
# does not resolve embedmix.<room>, so this is what guards the directions
FORBIDDEN = {
    "core": set(ROOMS) - {"core"},
    "api": {"worker", "cli"},
    "worker": {"api", "cli"},
    "store": {"api", "worker", "cli", "client", "core"},
    "client": set(ROOMS) - {"client"},
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_in_the_stated_direction(room: str) -> None:
    wrong = sorted(f"{path.relative_to(ROOT)} -> {other}" for path in (ROOT / room).rglob("*.py")
                   for other in _rooms_imported(path) & FORBIDDEN[room])
    assert wrong == []


def test_the_direction_check_sees_namespaced_imports() -> None:
    """The check above would pass vacuously if it missed every import: worker does import core."""
    assert "core" in set().union(*map(_rooms_imported, (ROOT / "worker").rglob("*.py")))
