"""The protobuf gate: buf lint, buf format, buf breaking against the last release, and gen/ freshness."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from orchestra_server import codegen

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The descriptors of the last released proto (`make release-proto` writes it at a release); a
# committed break shows up against it, where a comparison with main would compare main with itself.
RELEASED_IMAGE = ROOT / "contract" / "orchestra-v1.proto-image.json"


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / "buf"
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format() -> None:
    result = buf("format", "--diff", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr


def buf_breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of the workspace (a folder with buf.yaml and proto/) against the release."""
    return buf("breaking", str(workspace), "--against", str(RELEASED_IMAGE))


def test_no_breaking_change_since_the_last_release() -> None:
    """The proto may only grow compatibly (wire and JSON names) from what was released."""
    result = buf_breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_check_catches_a_renumbered_field(tmp_path: Path) -> None:
    proto = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto)
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    service = proto / "orchestra" / "v1" / "orchestra_service.proto"
    text = service.read_text()
    edited = text.replace("string instance_id = 1;", "string instance_id = 7;", 1)
    assert edited != text
    service.write_text(edited)
    result = buf_breaking(tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr


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
