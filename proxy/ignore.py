"""activity.ignore_paths / ignore_user_agents: requests that neither wake nor count.

A route's rules are compiled once (exact paths in a set, `prefix*` patterns in a
tuple for one `startswith`, agents lower-cased) and cached by the rules
themselves, so a table update with unchanged rules reuses them; a route with
no rules costs nothing per request.
"""

from __future__ import annotations

from controller.spec import Route


class IgnoreRules:
    __slots__ = ("_agents", "_exact", "_prefixes")

    def __init__(self, paths: tuple[str, ...], agents: tuple[str, ...]) -> None:
        self._exact = frozenset(p for p in paths if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))
        self._agents = tuple(a.lower() for a in agents)

    def match(self, path: str, agent: str) -> bool:
        if path in self._exact or (self._prefixes and path.startswith(self._prefixes)):
            return True
        if self._agents and agent:
            agent = agent.lower()
            return any(needle in agent for needle in self._agents)
        return False


_compiled: dict[tuple[tuple[str, ...], tuple[str, ...]], IgnoreRules] = {}


def rules(paths: tuple[str, ...], agents: tuple[str, ...]) -> IgnoreRules | None:
    """The compiled rules, None when there are none."""
    if not paths and not agents:
        return None
    key = (paths, agents)
    found = _compiled.get(key)
    if found is None:
        if len(_compiled) > 4096:
            _compiled.clear()
        found = _compiled[key] = IgnoreRules(paths, agents)
    return found


def is_ignored(route: Route, path: str, agent: str) -> bool:
    """A request that neither wakes the instance nor counts as its activity (both paths)."""
    compiled = rules(route.ignore_paths, route.ignore_user_agents)
    return compiled is not None and compiled.match(path, agent)
