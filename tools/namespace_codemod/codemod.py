#!/usr/bin/env python3
"""Codemod: the repository's rooms install and import under one namespace, ``embedmix``.

Run in a checkout's root:  python3 tools/namespace_codemod/codemod.py [--check]
Idempotent (a second run changes nothing) and re-runnable on a newer tree; prints every change.
--check: print what would change, write nothing, exit 1 if anything would.

What it does:
- every .py file (rooms, tests, bench, migrations, examples): ``from core.x import`` ->
  ``from embedmix.core.x import``; ``import core.x [as y]`` -> ``import embedmix.core.x [as y]``
  (and, without ``as``, the file's ``core.x.attr`` uses -> ``embedmix.core.x.attr``);
  string module references: ``"cli.main"``, ``"api.app:create_app"``, ``-m cli.main``,
  and code passed to ``python -c``;
- pyproject.toml: console script, package-dir mapping embedmix.<room> -> <room>, the packages
  list (computed from the tree) and package data (api's static files, migrations' template);
- alembic.ini: no ``prepend_sys_path = .`` (the root is no source root any more);
- markdown: ``python -m cli.main`` -> ``python -m embedmix.cli.main``;
- tests/unit/test_compose.py: the Dockerfile check reads the package-dir mapping;
- README.md: one paragraph under "## Layout" on the namespace and the client distribution;
- new files from tools/namespace_codemod/files/ (client/pyproject.toml, tests), copied if different.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

NAMESPACE = "embedmix"
ROOMS = ("core", "api", "cli", "client", "service", "store", "worker", "migrations")
ROOM_RE = "|".join(ROOMS)
SKIP_DIRS = {".venv", ".git", "build", "dist", "node_modules", ".embedmix", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".hypothesis", "tools"}  # tools/: this codemod and its files
NOT_DATA = {"pyproject.toml", "README.md"}  # client/'s own distribution files, not package data
FILES_DIR = Path(__file__).resolve().parent / "files"
CHECK = "--check" in sys.argv
changed: list[str] = []


def note(path: Path | str, what: str) -> None:
    changed.append(f"{path}: {what}")
    print(f"{path}: {what}")


def write(path: Path, old: str, new: str) -> None:
    if new != old and not CHECK:
        path.write_text(new)


# --- Python sources ------------------------------------------------------------------------------

def python_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        out.append(path)
    return out


def module_exists(root: Path, dotted: str) -> bool:
    """Does ``dotted`` name a module or package of the tree (a label such as "core.evaluate.f" does not)?"""
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def line_offsets(text: str) -> list[int]:
    offsets, pos = [0], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        offsets.append(pos)
    return offsets


CODE_FROM = re.compile(rf"\bfrom\s+({ROOM_RE})(?=[.\s])")
CODE_IMPORT = re.compile(rf"(\bimport\s+(?:[\w.]+\s*,\s*)*)({ROOM_RE})(?=\.)")
DASH_M = re.compile(rf"(-m\s+)({ROOM_RE})(?=\.)")
WHOLE = re.compile(rf"^({ROOM_RE})(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")


# calls whose first argument is a module's name: resources.files("api"), import_module("core.x"), ...
MODULE_TAKERS = {"files", "import_module", "find_spec", "resource_filename", "resource_string", "import_string"}


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def rewrite_code_text(text: str) -> str:
    """Imports and ``-m`` inside a string (code for ``python -c``, a shell line)."""
    text = CODE_FROM.sub(rf"from {NAMESPACE}.\1", text)
    text = CODE_IMPORT.sub(rf"\1{NAMESPACE}.\2", text)
    return DASH_M.sub(rf"\1{NAMESPACE}.\2", text)


def rewrite_python(root: Path, path: Path) -> None:
    source = path.read_text()
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        print(f"WARNING {path}: not parsed ({exc}); left as it is")
        return
    offsets = line_offsets(source)
    edits: list[tuple[int, int, str, str]] = []  # (start, end, replacement, what)

    def pos(lineno: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        line = source[offsets[lineno - 1]:offsets[lineno]]
        return offsets[lineno - 1] + len(line.encode()[:col].decode())

    bare_roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in ROOMS:
            start = pos(node.lineno, node.col_offset)
            m = re.compile(r"from\s+").match(source, start)
            assert m, (path, node.lineno)
            edits.append((m.end(), m.end(), f"{NAMESPACE}.", f"from {node.module} import"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                root_name = alias.name.split(".")[0]
                if root_name not in ROOMS:
                    continue
                start = pos(alias.lineno, alias.col_offset)
                if alias.asname is None and "." not in alias.name:
                    # `import core` binds the room itself: `from embedmix import core` binds the same name
                    print(f"WARNING {path}:{alias.lineno}: bare `import {alias.name}`; rewrite it by hand")
                    continue
                edits.append((start, start, f"{NAMESPACE}.", f"import {alias.name}"))
                if alias.asname is None:
                    bare_roots.add(root_name)
    if bare_roots:
        bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                  for a in [*n.posonlyargs, *n.args, *n.kwonlyargs, *filter(None, [n.vararg, n.kwarg])]}
        bound |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  for a in n.names}
        for name in sorted(bare_roots & bound):
            print(f"WARNING {path}: `import {name}.x` and `{name}` bound elsewhere too; its uses left as they are")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bare_roots - bound and isinstance(node.value.ctx, ast.Load)):
                start = pos(node.value.lineno, node.value.col_offset)
                edits.append((start, start, f"{NAMESPACE}.", f"use {node.value.id}.{node.attr}"))

    docs = docstring_ids(tree)
    path_operands = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    path_operands |= {id(n.left) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    module_args = {id(n.args[0]) for n in ast.walk(tree)
                   if isinstance(n, ast.Call) and n.args and _called_name(n.func) in MODULE_TAKERS}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
            continue
        if id(node) in path_operands or node.end_lineno is None:
            continue
        value = node.value
        if (WHOLE.match(value) and module_exists(root, value.split(":")[0])) or (
                id(node) in module_args and value in ROOMS):
            new_value = f"{NAMESPACE}.{value}"
        else:
            new_value = rewrite_code_text(value)
        if new_value == value:
            continue
        start, end = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
        segment = source[start:end]
        if new_value == f"{NAMESPACE}.{value}":
            new_segment = re.sub(rf"^([rbuRBU]*['\"]+)({ROOM_RE})\b", rf"\1{NAMESPACE}.\2", segment, count=1)
        else:
            new_segment = rewrite_code_text(segment)
        if new_segment == segment or ast.literal_eval(new_segment) != new_value:
            print(f"WARNING {path}:{node.lineno}: string {value!r} not rewritten (its source form differs)")
            continue
        edits.append((start, end, new_segment, f"string {value[:70]!r}"))

    if not edits:
        return
    text = source
    for start, end, replacement, what in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    for start, _, _, what in sorted(edits, key=lambda e: e[0]):
        lineno = source.count("\n", 0, start) + 1
        note(f"{path.relative_to(root)}:{lineno}", what)
    ast.parse(text)  # the rewrite must still parse
    write(path, source, text)


# --- pyproject.toml ------------------------------------------------------------------------------

def packages_of(root: Path) -> list[str]:
    """Every package of the rooms, as installed: a folder with __init__.py, and migrations' folders."""
    names = []
    for room in ROOMS:
        base = root / room
        if not base.is_dir():
            continue
        for folder in sorted([base, *[p for p in base.rglob("*") if p.is_dir()]]):
            rel = folder.relative_to(root)
            if any(part in SKIP_DIRS for part in rel.parts):
                continue
            if (folder / "__init__.py").is_file() or (room == "migrations" and any(folder.glob("*.py"))):
                names.append(".".join([NAMESPACE, *rel.parts]))
    return names


def package_data_of(root: Path, packages: list[str]) -> dict[str, list[str]]:
    """Non-Python files of the rooms, each under the nearest installed package, as folder globs."""
    folders = {tuple(p.split(".")[1:]): p for p in packages}
    data: dict[str, set[str]] = {}
    for room in ROOMS:
        for file in sorted((root / room).rglob("*")) if (root / room).is_dir() else []:
            rel = file.relative_to(root)
            if (not file.is_file() or file.suffix in (".py", ".pyc") or file.name in NOT_DATA
                    or any(p in SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts)):
                continue
            parts = rel.parts[:-1]
            while parts not in folders:
                parts = parts[:-1]
            inner = rel.parts[len(parts):-1]
            pattern = "/".join([*inner, "*"]) if inner else file.name
            data.setdefault(folders[parts], set()).add(pattern)
    return {k: sorted(v) for k, v in sorted(data.items())}


def setuptools_block(root: Path) -> str:
    packages = packages_of(root)
    lines = [
        "# The repository keeps its top-level folders; installed, each imports under one namespace of",
        "# our own (embedmix.core, embedmix.api, ...), so site-packages gets no generic top-level names.",
        "# `packages` is every package of those folders (tests/unit/test_namespace.py checks the wheel",
        "# holds every module of the tree).",
        "[tool.setuptools]",
        "packages = [",
        *[f'    "{p}",' for p in packages],
        "]",
        "",
        "[tool.setuptools.package-dir]",
        *[f'"{NAMESPACE}.{room}" = "{room}"' for room in ROOMS if (root / room).is_dir()],
        "",
        "[tool.setuptools.package-data]",
    ]
    comments = {f"{NAMESPACE}.api": "  # the dashboard's pages, scripts and styles, served under /ui",
                f"{NAMESPACE}.migrations": "  # Alembic's template for new revisions"}
    for package, patterns in package_data_of(root, packages).items():
        quoted = ", ".join(f'"{p}"' for p in patterns)
        lines.append(f'"{package}" = [{quoted}]{comments.get(package, "")}')
    return "\n".join(lines) + "\n"


def rewrite_pyproject(root: Path) -> None:
    path = root / "pyproject.toml"
    old = path.read_text()
    text = re.sub(rf'^(embedmix\s*=\s*")(?:{NAMESPACE}\.)?cli\.main:app"', rf'\g<1>{NAMESPACE}.cli.main:app"', old,
                  flags=re.M)
    # the setuptools section: from its leading comment (if ours) or first [tool.setuptools...] header
    # to the next header that is not [tool.setuptools...]
    lines = text.splitlines(keepends=True)
    heads = [i for i, l in enumerate(lines) if re.match(r"\[tool\.setuptools[.\]]", l)]
    if not heads:
        raise SystemExit("pyproject.toml has no [tool.setuptools...] section")
    start = comment = heads[0]
    while comment > 0 and lines[comment - 1].startswith("#"):
        comment -= 1
    if "imports under one namespace" in "".join(lines[comment:start]):
        start = comment  # our own comment from an earlier run
    end = heads[-1] + 1
    while end < len(lines) and not lines[end].startswith("["):
        end += 1
    while end > start and lines[end - 1].strip() == "":
        end -= 1
    text = "".join(lines[:start]) + setuptools_block(root) + "".join(lines[end:])
    if text != old:
        note("pyproject.toml", "console script and [tool.setuptools] (package-dir, packages, package-data)")
        write(path, old, text)


# --- other files ---------------------------------------------------------------------------------

def rewrite_text_file(root: Path, rel: str, pattern: str, replacement: str, what: str) -> None:
    path = root / rel
    if not path.is_file():
        return
    old = path.read_text()
    text = re.sub(pattern, replacement, old, flags=re.M)
    if text != old:
        note(rel, what)
        write(path, old, text)


def rewrite_markdown(root: Path) -> None:
    for path in sorted(root.glob("*.md")) + sorted((root / "docs").glob("*.md")):
        old = path.read_text()
        text = re.sub(rf"(python -m )({ROOM_RE})\.", rf"\1{NAMESPACE}.\2.", old)
        if text != old:
            note(path.relative_to(root), "python -m <room> -> python -m embedmix.<room>")
            write(path, old, text)


COMPOSE_OLD = '''    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        package = pattern.rstrip("*")
        assert f"COPY {package} {package}" in dockerfile, package
    assert "COPY migrations migrations" in dockerfile and "alembic.ini" in dockerfile
'''
COMPOSE_NEW = '''    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        assert f"COPY {folder} {folder}" in dockerfile, folder
    assert "alembic.ini" in dockerfile
'''

README_ANCHOR = "## Layout\n\n"
README_PARAGRAPH = (
    "Installed, the top-level folders below import under one namespace: `pip install .` puts only\n"
    "`embedmix` into site-packages (`embedmix.core`, `embedmix.api`, `embedmix.cli`, ...; the\n"
    "`embedmix` command is `python -m embedmix.cli.main`), never a module named `core` or `api`.\n"
    "The Python client is also a distribution of its own that needs only httpx (no torch):\n"
    "`pip install ./client`, then `from embedmix.client import EmbedmixClient` (`submit`,\n"
    "`wait(job_id, on_progress=...)`, `download`). The service's distribution already holds it,\n"
    "so an environment installs one or the other.\n\n"
)


def rewrite_compose_test(root: Path) -> None:
    path = root / "tests/unit/test_compose.py"
    if not path.is_file():
        return
    old = path.read_text()
    if COMPOSE_OLD in old:
        note("tests/unit/test_compose.py", "Dockerfile check reads [tool.setuptools.package-dir]")
        write(path, old, old.replace(COMPOSE_OLD, COMPOSE_NEW))
    elif COMPOSE_NEW not in old and "packages\"][\"find\"]" in old:
        print("WARNING tests/unit/test_compose.py: its Dockerfile check reads packages.find; update it by hand")


def rewrite_readme(root: Path) -> None:
    path = root / "README.md"
    old = path.read_text()
    if README_PARAGRAPH.strip().splitlines()[0] in old:
        return
    if README_ANCHOR not in old:
        print("WARNING README.md: no '## Layout' heading; the namespace paragraph was not added")
        return
    note("README.md", "paragraph on the embedmix namespace and the client distribution under ## Layout")
    write(path, old, old.replace(README_ANCHOR, README_ANCHOR + README_PARAGRAPH, 1))


def copy_new_files(root: Path) -> None:
    for source in sorted(FILES_DIR.rglob("*")):
        if not source.is_file() or "__pycache__" in source.parts:
            continue
        rel = source.relative_to(FILES_DIR)
        target = root / rel
        if target.is_file() and target.read_bytes() == source.read_bytes():
            continue
        note(rel, "created" if not target.exists() else "replaced from ns_codemod_files")
        if not CHECK:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def main() -> int:
    root = Path.cwd()
    if not (root / "pyproject.toml").is_file() or not (root / "core").is_dir():
        raise SystemExit("run this in the repository's root (pyproject.toml and core/ are there)")
    copy_new_files(root)
    for path in python_files(root):
        rewrite_python(root, path)
    rewrite_pyproject(root)
    rewrite_text_file(root, "alembic.ini", r"^prepend_sys_path = \.\n", "",
                      "no prepend_sys_path (env.py imports embedmix.store, from the installed package)")
    rewrite_markdown(root)
    rewrite_compose_test(root)
    rewrite_readme(root)
    print(f"{len(changed)} change(s)" + (" would be made" if CHECK else ""))
    return 1 if CHECK and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
