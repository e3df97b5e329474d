"""Deploying and listing process definitions: validated as a whole, versioned, never half-deployed."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from orchestra_server.engine.definition import canonical_content, content_hash, load, parse
from orchestra_server.engine.document import MAX_DOCUMENT_BYTES
from orchestra_server.engine.model import Definition
from orchestra_server.errors import DefinitionInvalid, InvalidArgument
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.schema import SHARED_TENANT_KEY
from orchestra_server.storage.tenancy import tenant_exists


@dataclass(frozen=True, slots=True)
class LoadedDefinition:
    source: str
    definition: Definition
    # The canonical form: what is stored, and what its hash versions.
    content: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class DeployResult:
    definition_id: str
    tenant: str | None
    version: int
    changed: bool
    source: str


def parse_stored(content: str) -> Definition:
    """A stored version, as accepted when it was deployed (earlier versions checked less, so not strictly)."""
    return parse(json.loads(content), source="stored definition", strict=False)


def load_definition_file(path: Path) -> LoadedDefinition:
    """Reads and validates one YAML or JSON definition file; DefinitionInvalid names the file."""
    source = str(path)
    try:
        if not path.is_file():
            raise DefinitionInvalid([f"{source}: not a regular file"])
        with path.open("rb") as stream:
            # One byte more than allowed is enough to know the file is too large.
            content = stream.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise DefinitionInvalid([f"{source}: cannot be read ({exc.strerror or exc})"]) from None
    definition = load(content, source=source)
    return LoadedDefinition(source, definition, canonical_content(definition), content_hash(definition))


def load_definition_text(text: str, *, source: str) -> LoadedDefinition:
    """Reads and validates one YAML or JSON definition sent as text; DefinitionInvalid names `source`."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise DefinitionInvalid([f"{source}: larger than {MAX_DOCUMENT_BYTES} bytes"])
    definition = load(text, source=source)
    return LoadedDefinition(source, definition, canonical_content(definition), content_hash(definition))


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
        return self.deploy_loaded(load_definition_files(paths), tenant=tenant)

    def deploy_loaded(
        self, loaded: Sequence[LoadedDefinition], *, tenant: str | None, actor: str = "operator"
    ) -> list[DeployResult]:
        """Deploys validated definitions in one transaction, for `tenant` or shared (None)."""
        tenant_key = tenant if tenant is not None else SHARED_TENANT_KEY
        results: list[DeployResult] = []
        with self._db.writing() as conn:
            if tenant is not None and not tenant_exists(conn, tenant):
                raise InvalidArgument(f"unknown tenant '{tenant}'")
            now = self._clock()
            for item in loaded:
                latest = repo.latest_definition_version(conn, tenant_key, item.definition.id)
                if latest is not None and _same_definition(latest, item):
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
                    actor=actor,
                    action="definition.deploy",
                    instance_id=None,
                    detail={"definition_id": item.definition.id, "version": version, "source": item.source},
                )
                results.append(DeployResult(item.definition.id, tenant, version, True, item.source))
        return results

    def list(self, *, tenant: str | None = None) -> list[repo.StoredDefinition]:
        with self._db.reading() as conn:
            return repo.list_definitions(conn, tenant)


def _same_definition(stored: repo.StoredDefinition, item: LoadedDefinition) -> bool:
    """Whether a deploy changes nothing: same hash, or (for a version stored before definitions were
    stored in canonical form) the same canonical form once read."""
    if stored.content_hash == item.content_hash:
        return True
    try:
        return canonical_content(parse_stored(stored.content)) == item.content
    except (DefinitionInvalid, ValueError):
        return False
