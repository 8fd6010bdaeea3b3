"""The error a route that cannot be parsed raises."""

from __future__ import annotations

from edgefleet.errors import EdgefleetError

__all__ = ["RouteError"]


class RouteError(EdgefleetError):
    """Raise when a route cannot be parsed, naming the route, the problem and where it is."""

    def __init__(self, route: str, problem: str, position: int | None = None) -> None:
        self.route = route
        self.problem = problem
        self.position = position
        where = "" if position is None else f" at position {position}"
        super().__init__(f'route "{route}": {problem}{where}')
