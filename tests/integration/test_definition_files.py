"""Definition files on real storage and through the real command: one canonical version per meaning,
versions stored by earlier releases, and hostile files that end in a clean error, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestra_server import errors
from orchestra_server.engine.definition import parse, to_data
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from orchestra_server.storage.schema import SHARED_TENANT_KEY
from tests.conftest import EXAMPLES, PAGE_TOKEN_KEY, FakeClock

ORCHESTRA = Path(sys.executable).parent / "orchestra"
ALICE = Caller("default", "alice-site")

WRITTEN = """\
# Large claims wait for a decision; the rest go straight through.
id: claim
nodes:
  submit: {type: start}
  route: {type: gateway, gateway: exclusive}   # preset
  decide: {type: wait}
  done: {type: end}
flows:
  - {from: submit, to: route}
  - {from: route, to: decide, when: "amount > 1000"}
  - {from: route, to: done}
  - {from: decide, to: done}
"""
EXPANDED = {
    "nodes": {
        "done": {"type": "end"},
        "decide": {"type": "wait"},
        "route": {"type": "gateway", "join": "immediate", "split": "first"},
        "submit": {"type": "start"},
    },
    "flows": [
        {"to": "route", "from": "submit"},
        {"when": "amount > 1000", "to": "decide", "from": "route"},
        {"to": "done", "from": "route"},
        {"to": "done", "from": "decide"},
    ],
    "id": "claim",
}
# Accepted by earlier releases, refused by deploy now: a parallel join after an exclusive choice.
STUCK = {
    "id": "stuck",
    "nodes": {
        "s": {"type": "start"},
        "x": {"type": "gateway", "gateway": "exclusive"},
        "a": {"type": "wait"},
        "b": {"type": "wait"},
        "j": {"type": "gateway", "gateway": "parallel"},
        "e": {"type": "end"},
    },
    "flows": [
        {"from": "s", "to": "x"},
        {"from": "x", "to": "a", "when": "left"},
        {"from": "x", "to": "b"},
        {"from": "a", "to": "j"},
        {"from": "b", "to": "j"},
        {"from": "j", "to": "e"},
    ],
}


def store_as_earlier_releases_did(database: Database, data: dict[str, object]) -> None:
    """A version as stored before the canonical form: the file's data as JSON, hashed as such."""
    content = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with database.writing() as conn:
        repo.insert_definition_version(
            conn,
            tenant_key=SHARED_TENANT_KEY,
            definition_id=str(data["id"]),
            version=1,
            content=content,
            content_hash=hashlib.sha256(content.encode()).hexdigest(),
            source="old.yaml",
            now=datetime(2026, 1, 1, tzinfo=UTC),
        )


def test_equivalent_files_are_one_version_and_a_change_is_the_next(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    service = DefinitionService(database, clock=clock)
    written = tmp_path / "claim.yaml"
    written.write_text(WRITTEN)
    expanded = tmp_path / "claim.json"
    expanded.write_text(json.dumps(EXPANDED, indent=2))
    [first] = service.deploy([written])
    [again] = service.deploy([expanded])
    assert (first.version, first.changed) == (1, True)
    assert (again.version, again.changed) == (1, False)
    [stored] = service.list()
    assert stored.content == json.dumps(
        to_data(parse(EXPANDED, source="x")), sort_keys=True, separators=(",", ":")
    )
    written.write_text(WRITTEN.replace("amount > 1000", "amount > 2000"))
    [changed] = service.deploy([written])
    assert (changed.version, changed.changed) == (2, True)


def test_a_version_stored_by_an_earlier_release_is_recognised(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    store_as_earlier_releases_did(database, EXPANDED)
    path = tmp_path / "claim.yaml"
    path.write_text(WRITTEN)
    [result] = DefinitionService(database, clock=clock).deploy([path])
    assert (result.version, result.changed) == (1, False)


def test_instances_run_on_stored_versions_that_deploy_would_now_refuse(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "stuck.json"
    path.write_text(json.dumps(STUCK))
    with pytest.raises(errors.DefinitionInvalid, match="join 'wait_all' never fires"):
        DefinitionService(database, clock=clock).deploy([path])
    store_as_earlier_releases_did(database, STUCK)
    processes = ProcessService(
        database,
        clock=clock,
        new_id=iter(f"id-{n}" for n in range(100)).__next__,
        page_token_key=PAGE_TOKEN_KEY,
    )
    instance_id = processes.start_process(ALICE, "stuck", {"left": True})
    assert [t.node_id for t in processes.get_instance(ALICE, instance_id).tokens] == ["a"]


# -- hostile files through the real command ----------------------------------------------------------


def hostile_files(folder: Path) -> dict[str, Path]:
    files = {
        "deep.json": "[" * 5000 + "]" * 5000,
        "deep.yaml": "a: " + "{b: " * 5000 + "1" + "}" * 5000,
        "wide.json": "[" + "1," * 120_000 + "1]",
        "laughs.yaml": "\n".join(
            ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
            + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
        ),
        "twice.yaml": (EXAMPLES / "three_step.yaml").read_text() + "nodes: {}\n",
        "truncated.json": json.dumps(EXPANDED)[:-7],
    }
    paths = {}
    for name, text in files.items():
        paths[name] = folder / name
        paths[name].write_text(text)
    binary = {
        "junk.bin": os.urandom(4096),
        "latin1.yaml": "id: café\n".encode("latin-1"),
        "nul.yaml": b"id: x\x00\n",
        "huge.yaml": b"id: x\n" + b"# padding\n" * 200_000,
    }
    for name, content in binary.items():
        paths[name] = folder / name
        paths[name].write_bytes(content)
    paths["folder"] = folder / "folder.yaml"
    paths["folder"].mkdir()
    paths["missing"] = folder / "missing.yaml"
    return paths


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ORCHESTRA), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")},
    )


HOSTILE = [
    ("deep.json", "nested deeper than 64 levels"),
    ("deep.yaml", "nested deeper than 64 levels"),
    ("wide.json", "more than 100000 values"),
    ("laughs.yaml", "aliases (*name) are not allowed"),
    ("twice.yaml", "duplicate key 'nodes' at line 11 (first at line 4)"),
    ("truncated.json", "not valid YAML or JSON"),
    ("junk.bin", "not"),
    ("latin1.yaml", "not UTF-8 text"),
    ("nul.yaml", "is not allowed"),
    ("huge.yaml", "larger than 1048576 bytes"),
    ("folder", "not a regular file"),
    ("missing", "not a regular file"),
]


@pytest.mark.parametrize(("name", "fragment"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_validate_ends_hostile_files_with_a_clean_error(tmp_path: Path, name: str, fragment: str) -> None:
    path = hostile_files(tmp_path)[name]
    result = run("definition", "validate", str(path))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}: "), result.stderr
    assert fragment in result.stderr
    assert len(result.stderr) < 2000
    assert result.stdout == ""


def test_deploy_of_hostile_files_names_each_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    paths = hostile_files(tmp_path / "files")
    data_dir = tmp_path / "data"
    good = EXAMPLES / "three_step.yaml"
    result = run("definition", "deploy", str(good), *map(str, paths.values()), "--data-dir", str(data_dir))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    for path in paths.values():
        assert f"error: {path}: " in result.stderr, path
    assert str(good) not in result.stderr
    listed = run("definition", "list", "--json", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
