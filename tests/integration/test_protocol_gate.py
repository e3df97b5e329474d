"""The protobuf gate: buf lint, buf format, buf breaking against main, and gen/ freshness."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra_server import codegen

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / "buf"
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format() -> None:
    result = buf("format", "--diff", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr


def _main_ref() -> str | None:
    for ref in ("main", "origin/main"):
        probe = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}:proto/orchestra"],
            cwd=ROOT,
            capture_output=True,
        )
        if probe.returncode == 0:
            return ref
    return None


def test_buf_breaking_against_main() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to compare against")
    ref = _main_ref()
    if ref is None:
        pytest.skip("main has no proto/ yet: nothing to compare against")
    result = buf("breaking", "--against", f".git#ref={ref},subdir=proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    codegen.generate(fresh)
    stale = codegen.differences(fresh, ROOT / "gen")
    assert not stale, f"gen/ is stale, run `make gen`: {stale}"


def test_vendored_annotations_match_installed() -> None:
    from importlib import resources

    for name in codegen.VENDORED_GOOGLE_API:
        installed = resources.files("google.api").joinpath(name).read_bytes()
        assert (ROOT / "proto" / "google" / "api" / name).read_bytes() == installed, name


def test_staleness_check_can_fail(tmp_path: Path) -> None:
    copy = tmp_path / "gen"
    shutil.copytree(ROOT / "gen", copy)
    (copy / "python" / "orchestra" / "v1" / "orchestra_service_pb2.py").write_text("# edited\n")
    assert codegen.differences(copy, ROOT / "gen")
