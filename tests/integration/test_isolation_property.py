"""Tenant isolation as a property: random operations of two tenants never reveal or change the other's data.

A foreign id must answer exactly as an id that never existed: same error type,
same message, same empty result. That holds for the consumer operations and for
the operations API (detail, history, cancel, resolve, definitions, listings and
batches), with incidents and cancelled instances among the random states.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from orchestra_server import errors
from orchestra_server.bootstrap import utc_now
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.directory import DirectoryService
from orchestra_server.service.operations import RESOLVE_ACTIONS, InstanceFilter, OperationsService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.storage.database import open_database
from orchestra_server.storage.migrate import upgrade
from tests.conftest import EXAMPLES, PAGE_TOKEN_KEY

TENANTS = ("default", "rival")
NEVER = "11111111-2222-3333-4444-555555555555"
# Shared, so both tenants start it: a signal without `approved` leaves an incident.
FRAGILE = {
    "id": "fragile",
    "nodes": {"s": {"type": "start"}, "task": {"type": "wait"}, "e": {"type": "end"}},
    "flows": [{"from": "s", "to": "task"}, {"from": "task", "to": "e", "when": "approved"}],
}
# Deployed for the rival tenant only.
PRIVATE = {**FRAGILE, "id": "rival_only"}
DEFINITIONS = ("three_step", "parallel_review", "fragile")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def outcome(call: Any) -> tuple[str, Any]:
    """An answer reduced to what a caller can observe: the result, or the error's type and text."""
    try:
        return ("ok", call())
    except errors.OrchestraError as exc:
        return (type(exc).__name__, str(exc))


class TwoTenants(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.db = open_database(f"sqlite:///{Path(self.tmp.name) / 'o.db'}")
        upgrade(self.db)
        DirectoryService(self.db, clock=utc_now).create_tenant("rival")
        definitions = DefinitionService(self.db, clock=utc_now)
        fragile = Path(self.tmp.name) / "fragile.json"
        fragile.write_text(json.dumps(FRAGILE))
        definitions.deploy([EXAMPLES / "three_step.yaml", EXAMPLES / "parallel_review.yaml", fragile])
        private = Path(self.tmp.name) / "rival_only.json"
        private.write_text(json.dumps(PRIVATE))
        definitions.deploy([private], tenant="rival")
        counter = itertools.count()

        def new_id() -> str:
            return f"00000000-0000-4000-8000-{next(counter):012d}"

        self.processes = ProcessService(self.db, clock=utc_now, new_id=new_id, page_token_key=PAGE_TOKEN_KEY)
        self.operations = OperationsService(
            self.db,
            clock=utc_now,
            new_id=new_id,
            page_token_key=PAGE_TOKEN_KEY,
            processes=self.processes,
            definitions=definitions,
        )
        self.owned: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TENANTS}

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.db.dispose()
            self.tmp.cleanup()

    def caller(self, tenant: str) -> Caller:
        return Caller(tenant, f"{tenant}-site")

    def all_instances(self) -> list[tuple[str, str]]:
        return [(t, i) for t in TENANTS for i in self.owned[t]]

    @rule(
        tenant=st.sampled_from(TENANTS),
        definition=st.sampled_from(DEFINITIONS),
        variables=st.dictionaries(
            st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), json_values, max_size=3
        ),
    )
    def start(self, tenant: str, definition: str, variables: dict[str, Any]) -> None:
        instance_id = self.processes.start_process(self.caller(tenant), definition, variables)
        self.owned[tenant][instance_id] = dict(variables)

    @rule(data=st.data(), value=json_values)
    def write_own(self, data: st.DataObject, value: Any) -> None:
        choices = [(t, i) for t, i in self.all_instances()]
        if not choices:
            return
        tenant, instance_id = data.draw(st.sampled_from(choices))
        result = outcome(lambda: self.processes.set_variable(self.caller(tenant), instance_id, "v", value))
        if result[0] == "ok":
            self.owned[tenant][instance_id]["v"] = value

    @rule(data=st.data(), value=json_values)
    def probe_foreign(self, data: st.DataObject, value: Any) -> None:
        """Every operation aimed at the other tenant's instance or token answers as if it never existed."""
        choices = self.all_instances()
        if not choices:
            return
        owner, instance_id = data.draw(st.sampled_from(choices))
        stranger = self.caller(next(t for t in TENANTS if t != owner))
        tokens = [t.id for t in self.processes.get_instance(self.caller(owner), instance_id).tokens]
        token_id = data.draw(st.sampled_from(tokens)) if tokens else NEVER
        p = self.processes
        pairs = [
            (lambda: p.get_instance(stranger, instance_id), lambda: p.get_instance(stranger, NEVER)),
            (lambda: p.get_variables(stranger, instance_id), lambda: p.get_variables(stranger, NEVER)),
            (
                lambda: p.set_variable(stranger, instance_id, "v", value),
                lambda: p.set_variable(stranger, NEVER, "v", value),
            ),
            (lambda: p.signal_token(stranger, token_id), lambda: p.signal_token(stranger, NEVER)),
        ]
        o = self.operations
        action = data.draw(st.sampled_from(RESOLVE_ACTIONS))
        pairs += [
            (
                lambda: o.get_instance_detail(stranger, instance_id),
                lambda: o.get_instance_detail(stranger, NEVER),
            ),
            (
                lambda: o.get_instance_history(stranger, instance_id),
                lambda: o.get_instance_history(stranger, NEVER),
            ),
            (
                lambda: o.cancel_instance(stranger, instance_id, "probe"),
                lambda: o.cancel_instance(stranger, NEVER, "probe"),
            ),
            (
                lambda: o.resolve_incident(stranger, token_id, action, {"v": value}),
                lambda: o.resolve_incident(stranger, NEVER, action, {"v": value}),
            ),
        ]
        for foreign, missing in pairs:
            assert outcome(foreign) == outcome(missing)
        if stranger.tenant_id != "rival":
            never = "never_deployed"
            assert outcome(lambda: o.get_definition(stranger, "rival_only")) == outcome(
                lambda: o.get_definition(stranger, never)
            )

    @rule(data=st.data())
    def fail_own(self, data: st.DataObject) -> None:
        """Signals a fragile instance's task without `approved`: an incident."""
        choices = [
            (t, i)
            for t, i in self.all_instances()
            if self.processes.get_instance(self.caller(t), i).definition_id == "fragile"
        ]
        if not choices:
            return
        tenant, instance_id = data.draw(st.sampled_from(choices))
        for token in self.processes.get_instance(self.caller(tenant), instance_id).tokens:
            if token.status == "parked" and "approved" not in self.owned[tenant][instance_id]:
                self.processes.signal_token(self.caller(tenant), token.id)

    @rule(data=st.data())
    def cancel_own(self, data: st.DataObject) -> None:
        choices = self.all_instances()
        if not choices:
            return
        tenant, instance_id = data.draw(st.sampled_from(choices))
        outcome(lambda: self.operations.cancel_instance(self.caller(tenant), instance_id, "done with it"))

    @rule(data=st.data())
    def signal_own(self, data: st.DataObject) -> None:
        choices = self.all_instances()
        if not choices:
            return
        tenant, instance_id = data.draw(st.sampled_from(choices))
        parked = [
            t.id
            for t in self.processes.get_instance(self.caller(tenant), instance_id).tokens
            if t.status == "parked"
        ]
        if parked:
            self.processes.signal_token(self.caller(tenant), data.draw(st.sampled_from(parked)))

    @invariant()
    def each_tenant_sees_exactly_its_own(self) -> None:
        if not hasattr(self, "processes"):
            return
        for tenant in TENANTS:
            listed = {
                s.id for s in self.processes.list_instances(self.caller(tenant), page_size=1000).instances
            }
            assert listed == set(self.owned[tenant])
            for instance_id, variables in self.owned[tenant].items():
                assert self.processes.get_variables(self.caller(tenant), instance_id) == variables
            caller = self.caller(tenant)
            searched = self.operations.search_instances(caller, InstanceFilter(), page_size=1000).items
            assert {i.id for i in searched} == set(self.owned[tenant])
            incidents = self.operations.list_incidents(caller, page_size=1000).items
            assert {i.instance_id for i in incidents} <= set(self.owned[tenant])
            running = sum(1 for i in searched if i.status == "running")
            # Every running instance is counted, and nothing of the other tenant's.
            counted = self.operations.cancel_instances(caller, InstanceFilter(), dry_run=True).matched
            assert running <= counted <= len(searched)
            assert self.operations.retry_incidents(caller, dry_run=True).matched == len(incidents)
            visible = {d.definition_id for d in self.operations.list_definitions(caller)}
            assert ("rival_only" in visible) == (tenant == "rival")


TwoTenants.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
test_two_tenants = TwoTenants.TestCase
