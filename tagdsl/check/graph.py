"""Pass `graph`: reference cycles between tags (TD605) and unused lets (TD606).

Works on the syntax tree with `let` names expanded, so references made
through a let count and spans point into the tag's own condition. A tag in an
exclusive group also depends on its earlier siblings (first match wins, so
its effective condition contains "and none of the earlier ones").
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from .. import ast as A
from ..diagnostics import RULES, Diagnostic
from ..spans import Span
from .names import shown, tag_statements


_LEAVES = frozenset({A.Literal, A.SourceField, A.TagRef})  # nodes without sub-expressions


class Scoper:
    """Walks expressions the way `resolve` binds names: inside an aggregate
    over source S, a name is first a field of S; elsewhere a name that is a
    valid `let` is that let (lets may not shadow follower fields)."""

    def __init__(self, config, lets: dict):
        self.config = config
        self.lets = lets  # name -> LetStmt (valid lets only, as recorded by resolve)
        self._memo: dict[tuple[int, bool], tuple[object, list]] = {}

    def aggregate_source(self, call: A.Call) -> Optional[str]:
        if call.func not in A.AGGREGATES or not call.args:
            return None
        arg = call.args[0]
        source = arg.name if isinstance(arg, A.Name) else arg.source if isinstance(arg, A.SourceField) else None
        return source if source in self.config.sources else None

    def let_of(self, node: A.Name, source: Optional[str]) -> Optional[str]:
        if source is not None:
            spec = self.config.sources[source]
            if node.name in spec.fields or node.name == spec.time:
                return None
        return node.name if node.name in self.lets else None

    def nodes(self, root, expand: bool = True) -> list[tuple[object, Optional[str], Span]]:
        """(node, aggregate source or None, site) for every expression node
        under ``root``, depth first; ``site`` is the span in ``root`` itself
        that leads to the node (the let's name where the node comes from a
        let). With ``expand``, each let is expanded once per (let, scope).
        Memoised: the `graph` and `privacy` passes walk the same conditions."""
        key = (id(root), expand)
        found = self._memo.get(key)
        if found is None:
            # The memo keeps ``root`` alive, so its id cannot be reused.
            found = self._memo[key] = (root, self._walk(root, expand))
        return found[1]

    def _walk(self, root, expand: bool) -> list[tuple[object, Optional[str], Span]]:
        out = []
        expanded: set[tuple[str, Optional[str]]] = set()
        stack: list[tuple[object, Optional[str], Optional[Span]]] = [(root, None, None)]
        push = stack.append
        while stack:
            node, source, site = stack.pop()
            if node is None:
                continue
            here = site if site is not None else getattr(node, "span", None)
            out.append((node, source, here))
            if type(node) in _LEAVES:
                continue
            if isinstance(node, A.Binary):
                push((node.right, source, site))
                push((node.left, source, site))
            elif isinstance(node, A.Call):
                inner = self.aggregate_source(node) if node.func in A.AGGREGATES else None
                scope = inner if inner is not None else source
                push((node.within, source, site))
                push((node.where, scope, site))
                stack.extend((a, scope, site) for a in reversed(node.args))
            elif isinstance(node, A.Name):
                let = self.let_of(node, source)
                if expand and let is not None and (let, source) not in expanded:
                    expanded.add((let, source))
                    push((self.lets[let].expr, source, here))
            elif isinstance(node, A.ListExpr):
                stack.extend((i, source, site) for i in reversed(node.items))
            elif isinstance(node, A.Unary):
                push((node.operand, source, site))
            elif isinstance(node, A.Between):
                stack.extend([(node.high, source, site), (node.low, source, site), (node.operand, source, site)])
            elif isinstance(node, A.In):
                stack.extend([(node.options, source, site), (node.operand, source, site)])
            elif isinstance(node, A.IsMissing):
                push((node.operand, source, site))
            elif isinstance(node, A.Paren):
                push((node.expr, source, site))
        return out


def scoper_for(ctx) -> Scoper:
    """One Scoper per check run (its walks are memoised), renewed if the lets change."""
    lets = dict(ctx.let_stmts or {})
    cached = getattr(ctx, "scoper", None)
    if (cached is not None and cached.config is ctx.config and cached.lets.keys() == lets.keys()
            and all(cached.lets[k] is v for k, v in lets.items())):
        return cached
    scoper = Scoper(ctx.config, lets)
    try:
        ctx.scoper = scoper
    except AttributeError:  # a context object without the attribute (tests may pass their own)
        pass
    return scoper


def strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (rulesets may hold thousands of tags)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges.get(root, ())))]
        while work:
            v, successors = work[-1]
            descended = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                    descended = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                components.append(component)
    return components


def _cycle_through(start: str, members: set[str], edges: dict[str, list[str]]) -> list[str]:
    """The shortest path start -> … -> start inside one component."""
    if start in edges.get(start, ()):
        return [start, start]
    parent: dict[str, str] = {}
    queue = deque()
    for w in edges.get(start, ()):
        if w in members and w not in parent:
            parent[w] = start
            queue.append(w)
    while queue:
        v = queue.popleft()
        for w in edges.get(v, ()):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in parent:
                parent[w] = v
                queue.append(w)
    return [start, start]  # pragma: no cover - a component always has a cycle


def check_cycles(ctx, scoper: Scoper) -> None:
    definitions: dict[str, tuple[A.TagStmt, Optional[A.GroupStmt]]] = {}
    for stmt, group in tag_statements(ctx.modules):
        definitions.setdefault(stmt.name, (stmt, group))  # resolve keeps the first definition
    # edges[a] = [b, …]: a's effective condition depends on b. sites[(a, b)]: where, and why.
    edges: dict[str, list[str]] = {}
    sites: dict[tuple[str, str], tuple[Span, Optional[str]]] = {}

    def add(a: str, b: str, span: Span, group: Optional[str]) -> None:
        if (a, b) not in sites:
            sites[(a, b)] = (span, group)
            edges.setdefault(a, []).append(b)

    siblings: dict[str, list[str]] = {}
    for name, (stmt, group) in definitions.items():
        if stmt.manual or stmt.condition is None:
            continue  # a manual tag reads stored memberships: no dependency
        for node, source, site in scoper.nodes(stmt.condition):
            if isinstance(node, A.TagRef) and source is None and node.name in definitions:
                add(name, node.name, site, None)
        if group is not None and group.exclusive:
            earlier = siblings.setdefault(group.name, [])
            for sibling in earlier:
                add(name, sibling, stmt.name_span, group.name)
            earlier.append(name)

    order = list(definitions)
    position = {name: i for i, name in enumerate(order)}
    for component in strongly_connected(order, edges):
        members = set(component)
        if len(component) == 1 and component[0] not in edges.get(component[0], ()):
            continue
        start = min(component, key=position.__getitem__)
        path = _cycle_through(start, members, edges)
        span, _ = sites[(path[0], path[1])]
        notes = [f"`{shown(a)}` comes after `{shown(b)}` in exclusive group `{shown(g)}`, so it depends on it"
                 for a, b in zip(path, path[1:]) for _, g in [sites[(a, b)]] if g is not None]
        hint = "rewrite one of the conditions without tag(…)"
        if notes:
            hint += " (" + "; ".join(notes) + ")"
        ctx.diagnostics.append(Diagnostic(
            "TD605", RULES["TD605"].severity,
            f"tags depend on each other in a cycle: {' -> '.join(shown(n) for n in path)}", span, hint))


def check_unused_lets(ctx, scoper: Scoper) -> None:
    lets = scoper.lets
    if not lets:
        return
    used: set[str] = set()
    for module in ctx.modules:
        for node in A.walk(module):
            root = node.condition if isinstance(node, A.TagStmt) else node.expr if isinstance(node, A.AudienceStmt) else None
            if root is None:
                continue
            for sub, source, _ in scoper.nodes(root):
                if isinstance(sub, A.Name):
                    let = scoper.let_of(sub, source)
                    if let is not None:
                        used.add(let)
    # `resolve` records the lets it inlined into conditions; never report those.
    resolver = getattr(ctx, "resolver", None)
    used |= set(getattr(resolver, "used_lets", ()) or ()) & set(lets)
    for name, stmt in lets.items():
        if name in used:
            continue
        users = sorted({other for other, ostmt in lets.items() if other != name and any(
            isinstance(sub, A.Name) and scoper.let_of(sub, source) == name
            for sub, source, _ in scoper.nodes(ostmt.expr, expand=False))})
        if users:
            message = f"`let {name}` is only used by unused lets ({', '.join(f'`{u}`' for u in users)})"
        else:
            message = f"`let {name}` is never used"
        ctx.diagnostics.append(Diagnostic("TD606", RULES["TD606"].severity, message, stmt.name_span,
                                          "remove it, or use it in a tag or audience condition"))


def run(ctx) -> None:
    scoper = scoper_for(ctx)
    check_cycles(ctx, scoper)
    check_unused_lets(ctx, scoper)
