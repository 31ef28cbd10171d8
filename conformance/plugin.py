"""pytest11 entry point of specsample's conformance suite.

Loaded by every pytest run of an environment where specsample is installed, so it stays
import-cheap (pytest and the standard library only: torch, triton and cupy load when a specsample
test is collected) and its options are prefixed (``--specsample-*``) so they never clash with a
project's own ``--backend``.

Adds:
    ``--specsample-backend NAME`` (repeatable; default: every available backend),
    ``--specsample-level fast|full`` (default fast),
    ``--specsample-json PATH`` (write the results, schema ``specsample.conformance/1``),
    the ``specsample_backend`` fixture (a :class:`specsample.conformance.checks.Target`), with
    every test that uses it parametrized over the selected backends, and ``specsample_check``
    parametrized over the level's checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from .options import BACKEND_OPTION, CHECKS_OPTION, JSON_OPTION, LEVEL_OPTION, LEVELS

_RESULTS = "specsample-results"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("specsample", "specsample conformance suite")
    group.addoption(
        BACKEND_OPTION,
        action="append",
        default=None,
        dest="specsample_backends",
        metavar="NAME",
        help="backend to check (repeatable; default: every available backend)",
    )
    group.addoption(
        LEVEL_OPTION,
        choices=LEVELS,
        default="fast",
        dest="specsample_level",
        help="fast (CPU-friendly, the default) or full (more samples and shapes, GPU-only cases)",
    )
    group.addoption(
        CHECKS_OPTION,
        default=None,
        dest="specsample_checks",
        metavar="NAME[,NAME...]",
        help="only these checks, by exact name (default: every check of the level)",
    )
    group.addoption(
        JSON_OPTION,
        default=None,
        dest="specsample_json",
        metavar="PATH",
        help="write per-backend, per-check results as JSON (schema specsample.conformance/1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "specsample: a specsample conformance check")
    config.pluginmanager.register(ResultCollector(config), _RESULTS)


def _selected(config: pytest.Config) -> list[str]:
    """The backends to parametrize over (resolved once per session)."""
    cached = getattr(config, "_specsample_selected", None)
    if cached is not None:
        return cached
    from .options import resolve_backends

    requested = config.getoption("specsample_backends")
    available, unavailable = resolve_backends(requested)
    collector = config.pluginmanager.get_plugin(_RESULTS)
    if collector is not None:
        collector.order = list(available) + list(unavailable)
        collector.unavailable = dict(unavailable)
    if requested and unavailable:
        lines = "; ".join(f"{n}: {r}" for n, r in unavailable.items())
        raise pytest.UsageError(
            f"specsample conformance: requested backend(s) unavailable: {lines}"
        )
    config._specsample_selected = available  # type: ignore[attr-defined]
    return available


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "specsample_backend" in names:
        backends = _selected(metafunc.config)
        metafunc.parametrize("specsample_backend", backends, indirect=True, ids=backends)
    if "specsample_check" in names:
        from .checks import check_names

        checks = check_names(metafunc.config.getoption("specsample_level"))
        wanted = metafunc.config.getoption("specsample_checks")
        if wanted:
            names = [n.strip() for n in wanted.split(",") if n.strip()]
            unknown = [n for n in names if n not in checks]
            if unknown:
                raise pytest.UsageError(
                    f"{CHECKS_OPTION}: no check named {', '.join(map(repr, unknown))} "
                    f"(known: {', '.join(checks)})"
                )
            checks = [c for c in checks if c in names]
        metafunc.parametrize("specsample_check", checks, ids=checks)


@pytest.fixture
def specsample_backend(request: pytest.FixtureRequest) -> Any:
    """The backend under test as a ``Target`` (``.name``, ``.backend``, ``.device``, ``.level``)."""
    from .checks import get_target

    name = getattr(request, "param", None)
    if name is None:
        pytest.skip("specsample_backend is parametrized by the specsample plugin; none selected")
    return get_target(name, request.config.getoption("specsample_level"))


class ResultCollector:
    """Collects check results from test reports and writes the JSON at the end of the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        self.unavailable: dict[str, str] = {}
        self.order: list[str] = []
        self.level: str = config.getoption("specsample_level", "fast") or "fast"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        outcome = yield
        report = outcome.get_result()
        params = getattr(getattr(item, "callspec", None), "params", {})
        if report.when != "call" and report.failed and "specsample_check" in params:
            backend = params.get("specsample_backend")
            self._add(
                str(backend),
                params["specsample_check"],
                "error",
                report.duration,
                f"{report.when} failed: {str(report.longrepr)[-500:]}",
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        from .pytest_support import RESULT_KEY

        for key, value in report.user_properties:
            if key == RESULT_KEY and isinstance(value, dict):
                self.level = value.get("level", self.level)
                self._add(
                    value["backend"],
                    value["check"],
                    value["outcome"],
                    value["duration_s"],
                    value["details"],
                )

    def _add(self, backend: str, check: str, outcome: str, duration: float, details: str) -> None:
        self.results.setdefault(backend, {})[check] = {
            "outcome": outcome,
            "duration_s": round(float(duration), 4),
            "details": details,
        }

    def document(self) -> dict[str, Any] | None:
        """The results document, or None when no specsample check ran."""
        if not self.results and not self.unavailable:
            return None
        from .results import build

        return build(self.level, self.results, self.unavailable, self.order)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.config.getoption("specsample_json", None)
        if path:
            doc = self.document()
            if doc is not None:
                from .results import write

                write(path, doc)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results and not self.unavailable:
            return
        from .results import summary_lines

        doc = self.document()
        terminalreporter.section("specsample conformance")
        for line in summary_lines(doc):
            terminalreporter.write_line(line)
