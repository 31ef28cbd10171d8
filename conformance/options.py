"""Option names, levels and backend selection, shared by the pytest plugin, the runner and the CLI.

Import-cheap: the registry (hence torch) is imported only inside :func:`resolve_backends`.
"""

from __future__ import annotations

from collections.abc import Sequence

LEVELS = ("fast", "full")
BACKEND_OPTION = "--specsample-backend"
LEVEL_OPTION = "--specsample-level"
JSON_OPTION = "--specsample-json"
CHECKS_OPTION = "--specsample-checks"
CONFORMANCE_PACKAGE = "specsample.conformance"


def resolve_backends(requested: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Split backend names into those to test and those that cannot run, with the reason.

    Args:
        requested: names, or None/empty for every registered backend.

    Returns:
        ``(available, unavailable)``: the names to test, in order (every available backend when
        none was requested), and ``{name: reason}`` for the rest (unknown names included).
    """
    from specsample.registry import list_backends

    infos = list_backends()
    by_name = {info.name: info for info in infos}
    if not requested:
        return (
            [i.name for i in infos if i.available],
            {i.name: i.reason for i in infos if not i.available},
        )
    available: list[str] = []
    unavailable: dict[str, str] = {}
    for name in dict.fromkeys(requested):  # keep order, drop repeats
        info = by_name.get(name)
        if info is None:
            known = ", ".join(sorted(by_name)) or "none"
            unavailable[name] = f"no backend named {name!r} is registered (known: {known})"
        elif not info.available:
            unavailable[name] = info.reason or "unavailable"
        else:
            available.append(name)
    return available, unavailable
