"""Which of an instance's ready endpoints a request goes to: round robin, shared by both paths.

The fast path and the aiohttp path take turns from the same counter, so an
instance's replicas share its load whichever path serves a request.
"""

from __future__ import annotations

from controller.spec import Route


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], int] = {}

    def pick(self, route: Route, attempt: int) -> str:
        """Round robin; `attempt` 1, 2, ...: the endpoints after the one attempt 0 took."""
        if len(route.endpoints) == 1:
            return route.endpoints[0]
        n = self._next.get(route.key, 0)
        if attempt == 0:
            self._next[route.key] = n + 1
            return route.endpoints[n % len(route.endpoints)]
        return route.endpoints[(n - 1 + attempt) % len(route.endpoints)]
