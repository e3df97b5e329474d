"""The engine stays pure: importing it pulls in no storage, transport, identity or database code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import orchestra_server.engine

ENGINE = Path(orchestra_server.engine.__file__).parent
FORBIDDEN = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "grpc",
    "google.protobuf",
    "httpx",
    "oauthlib",
    "jwt",
    "orchestra",  # the generated protocol package
    "orchestra_server.storage",
    "orchestra_server.identity",
    "orchestra_server.transport",
    "orchestra_server.edge",
    "orchestra_server.service",
)


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def test_importing_the_engine_loads_nothing_forbidden() -> None:
    code = (
        "import json, sys\n"
        "import orchestra_server.engine, orchestra_server.engine.engine, orchestra_server.engine.definition\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(output)
    assert "orchestra_server.engine.engine" in loaded
    assert [name for name in loaded if _forbidden(name)] == []


def test_engine_sources_import_only_what_they_may() -> None:
    allowed_roots = {"__future__", "cel", "yaml", "orchestra_server"}
    for path in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in sys.stdlib_module_names or root in allowed_roots, f"{path.name} imports {name}"
                assert not _forbidden(name), f"{path.name} imports {name}"
                if root == "orchestra_server":
                    assert name in ("orchestra_server.errors",) or name.startswith("orchestra_server.engine")
