"""Wheels for the install tests: the project's two distributions built from a copy of their
sources, and installed distributions packed back into wheels so that a fresh venv can install
them with ``--no-index`` (no network, the very versions this environment runs)."""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")


def build_wheel(source: Path, dest: Path) -> Path:
    """``pip wheel`` of ``source`` into ``dest`` (no deps, no network); returns the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dest), str(source)], check=True, capture_output=True, text=True)
    (wheel,) = dest.glob("*.whl")
    return wheel


def project_wheel(tmp: Path) -> Path:
    """The service's distribution, built from a copy of what pyproject.toml names (the tree stays clean)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy(ROOT / name, source / name)
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, source / folder, ignore=COPY_IGNORE)
    return build_wheel(source, tmp / "wheel")


def client_wheel(tmp: Path) -> Path:
    """The client's own distribution (client/pyproject.toml), built from a copy of client/."""
    source = tmp / "client-src"
    shutil.copytree(ROOT / "client", source, ignore=COPY_IGNORE)
    return build_wheel(source, tmp / "client-wheel")


def requirements_closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that ``names`` need, themselves included (extras left out)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def wheel_from_installed(dist: metadata.Distribution, dest: Path) -> Path:
    """Pack an installed distribution's files (its RECORD) back into a wheel pip can install."""
    wheel_meta = next(f for f in dist.files or [] if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.read_text().splitlines() if line.startswith("Tag:"))
    name = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    path = dest / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if parts[0] == ".." or "__pycache__" in parts or file.name in ("INSTALLER", "direct_url.json"):
                continue
            wheel.write(dist.locate_file(file), str(file))
    return path
