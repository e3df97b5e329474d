"""The code gate in the suite: ruff, mypy --strict on the package (generated code excluded), and the
layer contracts (import-linter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check() -> None:
    result = run(str(BIN / "ruff"), "check", "orchestra_server", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", "orchestra_server", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run(str(BIN / "mypy"), "--strict", "orchestra_server")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_layer_fails_the_import_contracts(tmp_path: Path) -> None:
    # The same contracts on a copy of the package whose engine reaches into storage.
    shutil.copytree(ROOT / "orchestra_server", tmp_path / "orchestra_server")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "orchestra_server" / "engine" / "__init__.py"
    engine.write_text(engine.read_text() + "\nimport orchestra_server.storage.repository\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'gen' / 'python'}"},
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "orchestra_server.engine -> orchestra_server.storage.repository" in result.stdout.replace(
        "\n", " "
    )
