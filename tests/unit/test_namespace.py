"""The installed distributions import under one namespace, ``embedmix``: no room of the
repository (core, api, cli, ...) becomes a top-level module of site-packages, and the client
also ships alone, needing httpx and nothing else."""

from __future__ import annotations

import ast
import email
import tomllib
import zipfile
from pathlib import Path

from tests.wheels import ROOT, client_wheel, project_wheel

NAMESPACE = "embedmix"
ROOMS = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
SOURCES = (*ROOMS, "tests", "bench")


def _bare_room_imports(path: Path) -> list[str]:
    """``import core...`` / ``from api... import`` in one file: each would load a second copy of a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names if name.split(".")[0] in ROOMS]
    return found


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
