"""Deploying and listing process definitions: validated as a whole, versioned, never half-deployed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from orchestra_server.engine.definition import parse
from orchestra_server.engine.model import Definition
from orchestra_server.errors import DefinitionInvalid, InvalidArgument
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.schema import SHARED_TENANT_KEY
from orchestra_server.storage.tenancy import tenant_exists

MAX_DEFINITION_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoadedDefinition:
    source: str
    definition: Definition
    content: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class DeployResult:
    definition_id: str
    tenant: str | None
    version: int
    changed: bool
    source: str


def canonical_content(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_stored(content: str) -> Definition:
    return parse(json.loads(content), source="stored definition")


def load_definition_file(path: Path) -> LoadedDefinition:
    """Reads and validates one YAML or JSON definition file; DefinitionInvalid names the file."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_DEFINITION_FILE_BYTES:
            raise DefinitionInvalid([f"{source}: larger than {MAX_DEFINITION_FILE_BYTES} bytes"])
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DefinitionInvalid([f"{source}: cannot be read ({exc.strerror})"]) from exc
    except UnicodeDecodeError as exc:
        raise DefinitionInvalid([f"{source}: not UTF-8 text"]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionInvalid([f"{source}: not valid YAML or JSON ({_first_line(exc)})"]) from exc
    definition = parse(data, source=source)
    content = canonical_content(data)
    return LoadedDefinition(source, definition, content, hashlib.sha256(content.encode()).hexdigest())


def load_definition_files(paths: Sequence[Path]) -> list[LoadedDefinition]:
    """Validates every file, collecting every problem of every file before failing."""
    loaded: list[LoadedDefinition] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            item = load_definition_file(path)
        except DefinitionInvalid as exc:
            problems.extend(exc.problems)
            continue
        if item.definition.id in seen:
            problems.append(
                f"{item.source}: definition id '{item.definition.id}' is also in {seen[item.definition.id]}"
            )
        seen[item.definition.id] = item.source
        loaded.append(item)
    if problems:
        raise DefinitionInvalid(problems)
    return loaded


class DefinitionService:
    def __init__(self, database: Database, *, clock: Callable[[], datetime]) -> None:
        self._db = database
        self._clock = clock

    def deploy(self, paths: Sequence[Path], *, tenant: str | None = None) -> list[DeployResult]:
        """Deploys all the files in one transaction: all of them or, on any problem, none."""
        loaded = load_definition_files(paths)
        tenant_key = tenant if tenant is not None else SHARED_TENANT_KEY
        results: list[DeployResult] = []
        with self._db.writing() as conn:
            if tenant is not None and not tenant_exists(conn, tenant):
                raise InvalidArgument(f"unknown tenant '{tenant}'")
            now = self._clock()
            for item in loaded:
                latest = repo.latest_definition_version(conn, tenant_key, item.definition.id)
                if latest is not None and latest.content_hash == item.content_hash:
                    results.append(
                        DeployResult(item.definition.id, tenant, latest.version, False, item.source)
                    )
                    continue
                version = latest.version + 1 if latest else 1
                repo.insert_definition_version(
                    conn,
                    tenant_key=tenant_key,
                    definition_id=item.definition.id,
                    version=version,
                    content=item.content,
                    content_hash=item.content_hash,
                    source=item.source,
                    now=now,
                )
                repo.record_audit(
                    conn,
                    at=now,
                    tenant_id=tenant_key,
                    actor="operator",
                    action="definition.deploy",
                    instance_id=None,
                    detail={"definition_id": item.definition.id, "version": version, "source": item.source},
                )
                results.append(DeployResult(item.definition.id, tenant, version, True, item.source))
        return results

    def list(self, *, tenant: str | None = None) -> list[repo.StoredDefinition]:
        with self._db.reading() as conn:
            return repo.list_definitions(conn, tenant)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
