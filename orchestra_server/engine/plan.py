"""Per-definition lookup tables the engine walks: routes, joins, compiled expressions and reachability."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from orchestra_server.engine.conditions import Expression, compile_expression
from orchestra_server.engine.model import Definition, Flow, Join, Node

# Plans kept for the definitions most recently used; a server holds far fewer live definitions.
CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class NodePlan:
    node: Node
    # Declared outgoing flows in order, each with its compiled condition (None: always holds).
    routes: tuple[tuple[Flow, Expression | None], ...]
    timeout_flow: Flow | None
    incoming: tuple[int, ...]
    # The join as it behaves: a node with at most one incoming flow fires on every arrival.
    join: Join
    threshold: int
    until: Expression | None


class Plan:
    """Everything about a definition that does not depend on an instance, computed once."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        nodes: dict[str, NodePlan] = {}
        for node_id, node in definition.nodes.items():
            outgoing = definition.outgoing.get(node_id, ())
            incoming = tuple(flow.index for flow in definition.incoming.get(node_id, ()))
            routes = tuple(
                (flow, compile_expression(flow.when) if flow.when is not None else None)
                for flow in outgoing
                if not flow.timeout
            )
            timeout_flow = next((flow for flow in outgoing if flow.timeout), None)
            join = node.join if len(incoming) > 1 else Join.IMMEDIATE
            nodes[node_id] = NodePlan(
                node=node,
                routes=routes,
                timeout_flow=timeout_flow,
                incoming=incoming,
                join=join,
                threshold=node.threshold or 1,
                until=compile_expression(node.until) if node.until is not None else None,
            )
        self.nodes = nodes
        self.inclusive_joins = tuple(n for n, p in nodes.items() if p.join is Join.INCLUSIVE)
        self.incoming_mask = {n: _mask(p.incoming) for n, p in nodes.items()}
        self._out_mask = {n: _mask(f.index for f in definition.outgoing.get(n, ())) for n in nodes}
        self._reach: dict[str, int] = {}

    def reach(self, node_id: str) -> int:
        """Bit mask of the flows a token now at `node_id` could still travel along."""
        mask = self._reach.get(node_id)
        if mask is None:
            mask = 0
            if node_id in self.nodes:
                seen = {node_id}
                stack = [node_id]
                while stack:
                    current = stack.pop()
                    mask |= self._out_mask[current]
                    for flow in self.definition.outgoing.get(current, ()):
                        if flow.target not in seen:
                            seen.add(flow.target)
                            stack.append(flow.target)
            self._reach[node_id] = mask
        return mask


def _mask(indices: Iterable[int]) -> int:
    mask = 0
    for index in indices:
        mask |= 1 << index
    return mask


_cache: OrderedDict[int, tuple[Definition, Plan]] = OrderedDict()
_lock = threading.Lock()


def plan_for(definition: Definition) -> Plan:
    """The definition's plan, from the cache when this very object was planned before."""
    key = id(definition)
    with _lock:
        hit = _cache.get(key)
        # Holding the definition in the entry keeps its id from being reused while cached.
        if hit is not None and hit[0] is definition:
            _cache.move_to_end(key)
            return hit[1]
    plan = Plan(definition)
    with _lock:
        _cache[key] = (definition, plan)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return plan
