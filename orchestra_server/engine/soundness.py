"""What a definition's graph shows can never work: flows never taken, repeated flows, joins that never fire.

Flows. On a node, a flow "always holds" when it is not the default and has no condition, or a
condition without variables that is true. A flow can never be taken when its condition has no
variables and is false; on a `split: first` node, when it is listed after a flow that always
holds or after a flow with the same condition (the same text gives the same value); or when it
is the default and another flow of the node always holds. Beyond constants and repeated text,
conditions are not compared (`x` and `!x` together are not seen to cover every case). Two flows with the
same from, to and condition would carry two tokens where one is meant, so they are refused too.

Joins. A token is only ever multiplied by a `split: all` node taking two or more of its
non-default flows (a default flow is taken alone, `split: first` takes one, a wait's timeout
replaces its route). So two tokens can be live at once, one bound for incoming flow A of a join
and one for incoming flow B, only if some `split: all` node has two different non-default
outgoing flows, one of which leads (by any path) to A and the other to B. Incoming flows with no
such node are never filled together. From that:

* a `wait_all` join (a `parallel` gateway) with two incoming flows that can never be filled
  together never fires: refused, naming both flows. This is what an exclusive split followed by
  a parallel join with no parallel split between looks like;
* a `threshold: N` join fires only with N incoming flows filled together. An incoming flow can
  be filled together with at most the number of other incoming flows it pairs with as above, so
  when one plus the largest such number is below N, the join never fires: refused.

These are necessary conditions, not sufficient ones: a join that passes may still wait forever on
some run (an exclusive choice made later, a condition never true), which the engine reports at
run time. Inclusive joins are never refused: they fire on whatever can still arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from orchestra_server.engine.model import Flow, Join, Node, Split

# A problem: where (a node or flow, as the reader names them) and what.
Problem = tuple[str, str]


def flow_name(flow: Flow) -> str:
    return f"flow #{flow.index + 1} ({flow.source} -> {flow.target})"


def routing_problems(
    nodes: Mapping[str, Node],
    outgoing: Mapping[str, Sequence[Flow]],
    constant: Callable[[Flow], bool | None],
) -> list[Problem]:
    """Repeated flows, extra default flows and flows that can never be taken; `constant` gives a
    condition's value when it has no variables (None otherwise)."""
    problems: list[Problem] = []
    seen: dict[tuple[str, str, str | None], Flow] = {}
    for name, node in nodes.items():
        routes = [flow for flow in outgoing.get(name, ()) if not flow.timeout]
        for flow in routes:
            key = (flow.source, flow.target, flow.when)
            if key in seen:
                problems.append(
                    (f"{flow_name(flow)}: ", f"repeats {flow_name(seen[key])} (same from, to and condition)")
                )
            else:
                seen[key] = flow
        defaults = [flow for flow in routes if flow.default]
        if len(defaults) > 1:
            listed = ", ".join(f"#{flow.index + 1}" for flow in defaults)
            problems.append((f"node {name!r}: ", f"{len(defaults)} default flows ({listed}); at most one"))
        always = [flow for flow in routes if not flow.default and (flow.when is None or constant(flow))]
        for flow in routes:
            if flow.when is not None and constant(flow) is False:
                problems.append(
                    (f"{flow_name(flow)}: ", f"condition {flow.when!r} is always false: never taken")
                )
        first = always[0] if always else None
        if node.split is Split.FIRST:
            problems += _shadowed(routes, first)
        if first is not None:
            for flow in defaults:
                problems.append(
                    (
                        f"{flow_name(flow)}: ",
                        f"the default flow is never taken: {flow_name(first)} always holds",
                    )
                )
    return problems


def _shadowed(routes: Sequence[Flow], first: Flow | None) -> list[Problem]:
    """On a `split: first` node: flows after one that always holds, and flows whose condition (the
    same text, so the same value) an earlier flow already has."""
    problems: list[Problem] = []
    earlier: dict[str, Flow] = {}
    for flow in routes:
        if flow.default:
            continue
        if first is not None and flow.index > first.index:
            reason = f"{flow_name(first)} before it always holds"
        elif flow.when is not None and flow.when in earlier:
            reason = f"{flow_name(earlier[flow.when])} before it has the same condition"
        else:
            if flow.when is not None:
                earlier[flow.when] = flow
            continue
        problems.append(
            (f"{flow_name(flow)}: ", f"never taken: {reason} and split 'first' takes only one flow")
        )
    return problems


def join_problems(
    nodes: Mapping[str, Node],
    outgoing: Mapping[str, Sequence[Flow]],
    incoming: Mapping[str, Sequence[Flow]],
) -> list[Problem]:
    """`wait_all` and `threshold` joins whose incoming flows can never be filled together enough."""
    joins = [
        (name, node)
        for name, node in nodes.items()
        if len(incoming.get(name, ())) > 1
        and (node.join is Join.WAIT_ALL or (node.join is Join.THRESHOLD and (node.threshold or 1) > 1))
    ]
    if not joins:
        return []
    reach = _reach(nodes, outgoing)
    # Per `split: all` node with two or more non-default flows: per flow, what it leads to (a bit mask).
    forks = []
    for name, node in nodes.items():
        branches = [f for f in outgoing.get(name, ()) if not f.timeout and not f.default]
        if node.split is Split.ALL and len(branches) > 1:
            forks.append([(1 << f.index) | reach[f.target] for f in branches])
    problems: list[Problem] = []
    for name, node in joins:
        flows = incoming[name]
        # For each incoming flow and fork: the positions of the fork's branches that lead to it.
        leads = {flow.index: [_positions(fork, flow.index) for fork in forks] for flow in flows}

        def together(a: Flow, b: Flow, leads: dict[int, list[frozenset[int]]] = leads) -> bool:
            return any(
                mine and theirs and len(mine | theirs) > 1
                for mine, theirs in zip(leads[a.index], leads[b.index], strict=True)
            )

        if node.join is Join.WAIT_ALL:
            apart = next(
                ((a, b) for i, a in enumerate(flows) for b in flows[i + 1 :] if not together(a, b)), None
            )
            if apart is not None:
                problems.append(
                    (
                        f"node {name!r}: ",
                        f"join 'wait_all' never fires: {flow_name(apart[0])} and {flow_name(apart[1])} "
                        "are never both taken (no split 'all' node has separate flows leading to each)",
                    )
                )
        else:
            most = 1 + max(sum(1 for b in flows if b is not a and together(a, b)) for a in flows)
            threshold = node.threshold or 1
            if most < threshold:
                problems.append(
                    (
                        f"node {name!r}: ",
                        f"threshold {threshold} is never reached: at most {most} of its incoming flows "
                        "can carry tokens at the same time (only a split 'all' node makes tokens travel "
                        "together)",
                    )
                )
    return problems


def _positions(fork: list[int], flow: int) -> frozenset[int]:
    return frozenset(i for i, mask in enumerate(fork) if mask >> flow & 1)


def _reach(nodes: Mapping[str, Node], outgoing: Mapping[str, Sequence[Flow]]) -> dict[str, int]:
    """Node -> bit mask of the flows a token there could still travel along (strongly connected
    components first, so each mask is built once)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    reach: dict[str, int] = {}
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            out = outgoing.get(node, ())
            if position < len(out):
                work.append((node, position + 1))
                target = out[position].target
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            for flow in out:
                if flow.target in on_stack:
                    low[node] = min(low[node], low[flow.target])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                mask = 0
                for member in component:
                    for flow in outgoing.get(member, ()):
                        mask |= 1 << flow.index
                        if flow.target not in component:
                            mask |= reach[flow.target]
                for member in component:
                    reach[member] = mask
    return reach
