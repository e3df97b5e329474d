"""The repository stands alone: nothing in it reads outside its own root.

A user's clone has no sibling folders, so a test, a benchmark, a document or a build step that
reaches for `../something` works here and fails there. Two checks: every path the tracked files
name stays inside the root, and the whole suite is collected from a copy of the tree placed in
an otherwise empty folder.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Markdown links and inline code spans that name a relative path.
_MARKDOWN_PATH = re.compile(r"\]\(([^)#\s]+)|`([^`\s]*\.\./[^`\s]*)`")
_PARENT_REFERENCE = re.compile(r"(?<![\w.])\.\./")
_RELATIVE_REFERENCE = re.compile(r"(?<![\w.])(?:\.\./)+[\w.\-/]*")
_SOURCE_SUFFIXES = {".py", ".js", ".sh", ".toml", ".yaml", ".yml", ".json", ".tmpl", ".lua", ".cfg", ".ini"}


def tracked_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def escapes_root(base: Path, reference: str) -> bool:
    target = (base / reference).resolve()
    return target != ROOT and ROOT not in target.parents


def markdown_escapes(path: Path, text: str) -> list[str]:
    found = []
    for match in _MARKDOWN_PATH.finditer(text):
        reference = match.group(1) or match.group(2)
        if "://" in reference or reference.startswith(("mailto:", "/")):
            continue
        if escapes_root(path.parent, reference):
            found.append(reference)
    return found


def python_escapes(path: Path, text: str) -> list[str]:
    """`Path(__file__)` climbs above the root, or a parent folder is named where a path is built."""
    found = []
    depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is the root
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
            and node.slice.value > depth
        ):
            found.append(f"line {node.lineno}: parents[{node.slice.value}]")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "parent"
            and isinstance(node.value, ast.Name)
            and node.value.id.endswith("ROOT")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.parent")
        elif isinstance(node, ast.Call) and _called_name(node) in _PATH_BUILDERS:
            found += [f"line {node.lineno}: {text!r}" for text in _parent_strings(node.args)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [f"line {node.lineno}: {text!r}" for text in _parent_strings([node.left, node.right])]
    return found


# Calls that turn a string into a file system path; ids such as '../etc/passwd' sent as hostile
# input elsewhere are data, not paths, and are left alone.
_PATH_BUILDERS = {"Path", "PurePath", "open", "join", "read_text", "read_bytes", "from_path"}


def _called_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _parent_strings(nodes: list[ast.expr]) -> list[str]:
    return [
        item.value
        for item in nodes
        if isinstance(item, ast.Constant)
        and isinstance(item.value, str)
        and (item.value == ".." or _PARENT_REFERENCE.search(item.value))
    ]


def source_escapes(path: Path, text: str) -> list[str]:
    """Relative references in scripts, build files and configuration, resolved from their folder."""
    return [
        f"line {number}: {reference}"
        for number, line in enumerate(text.splitlines(), 1)
        for reference in _RELATIVE_REFERENCE.findall(line)
        if escapes_root(path.parent, reference)
    ]


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    problems = []
    for path in tracked_files():
        name = path.relative_to(ROOT)
        if name.parts[0] in ("gen", "proto") and name.parts[:2] != ("proto", "orchestra"):
            continue  # generated code and vendored annotations
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if path.suffix == ".md":
            problems += [f"{name}: {ref}" for ref in markdown_escapes(path, text)]
        elif path.suffix == ".py":
            problems += [f"{name}: {ref}" for ref in python_escapes(path, text)]
        elif path.suffix in _SOURCE_SUFFIXES or path.name == "Makefile" or name.parts[0] == ".ci":
            problems += [f"{name}: {ref}" for ref in source_escapes(path, text)]
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


def test_the_checks_see_an_escape(tmp_path: Path) -> None:
    """The detectors above fire on the shapes they exist for."""
    doc = ROOT / "docs" / "example.md"
    assert markdown_escapes(doc, "see [the contract](../../elsewhere/x.yaml)")
    assert not markdown_escapes(doc, "see [the proto](../proto/orchestra/v1/)")
    module = ROOT / "tests" / "contract" / "example.py"
    assert python_escapes(module, "from pathlib import Path\nX = Path(__file__).resolve().parents[3]\n")
    assert python_escapes(module, "ROOT = 1\nY = ROOT.parent / 'elsewhere'\n")
    assert python_escapes(module, "Z = Path('../elsewhere/contract.yaml')\n")
    assert python_escapes(module, "Z = HERE / '..' / '..' / '..' / 'elsewhere'\n")
    assert not python_escapes(module, "hostile = ['../../etc/passwd']\n")
    script = ROOT / "clients" / "node" / "test" / "example.js"
    assert source_escapes(script, "const c = require('../../../../elsewhere/x');")
    assert not source_escapes(script, "const c = require('../orchestra-client');")
    assert not python_escapes(module, "from pathlib import Path\nX = Path(__file__).resolve().parents[2]\n")


def test_the_suite_is_collected_from_a_lone_copy_of_the_tree(tmp_path: Path) -> None:
    """A copy with no siblings finds everything it needs at collection (module-level reads included)."""
    copy = tmp_path / "alone" / "orchestra"
    for path in tracked_files():
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert re.search(r"^\d+ tests? collected", result.stdout, re.MULTILINE), result.stdout[-2000:]
