"""Regenerates gen/ from proto/: Python stubs, type stubs and the descriptor set the edge loads."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
GEN_ROOT = REPO_ROOT / "gen"
DESCRIPTOR_NAME = "orchestra.pb"
# The HTTP annotation protos are copied verbatim from the installed common
# protos so that linting and generation need no network.
VENDORED_GOOGLE_API = ("annotations.proto", "http.proto", "httpbody.proto")


def own_proto_files() -> list[str]:
    """The project's own .proto files, relative to proto/, in a stable order."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "orchestra").rglob("*.proto"))


def vendor_google_api(proto_root: Path) -> None:
    source = resources.files("google.api")
    target = proto_root / "google" / "api"
    target.mkdir(parents=True, exist_ok=True)
    for name in VENDORED_GOOGLE_API:
        (target / name).write_bytes(source.joinpath(name).read_bytes())


def generate(out_root: Path) -> None:
    """Writes the whole of gen/ into out_root (which is emptied first)."""
    from grpc_tools import protoc

    if out_root.exists():
        shutil.rmtree(out_root)
    python_out = out_root / "python"
    python_out.mkdir(parents=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    files = own_proto_files()
    scripts = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={python_out}",
        f"--grpc_python_out={python_out}",
        f"--mypy_out={python_out}",
        f"--mypy_grpc_out={python_out}",
        f"--descriptor_set_out={out_root / DESCRIPTOR_NAME}",
        "--include_imports",
        "--include_source_info",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in {(python_out / f).parent for f in files} | {python_out / "orchestra"}:
        (directory / "__init__.py").touch()
        (directory / "py.typed").touch()


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two generated trees."""

    def listing(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    left, right = listing(a), listing(b)
    return sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale instead of rewriting it")
    options = parser.parse_args(argv)
    if options.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "gen"
            generate(fresh)
            stale = differences(fresh, GEN_ROOT)
        if stale:
            print("gen/ is stale; run `make gen`:", *stale, sep="\n  ", file=sys.stderr)
            return 1
        return 0
    vendor_google_api(PROTO_ROOT)
    generate(GEN_ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
