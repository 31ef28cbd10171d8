"""Running one check inside a pytest test, with the outcome recorded for the JSON results."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import run_check

# item.user_properties key holding a check's result (read by the plugin's result collector).
RESULT_KEY = "specsample"


def run_in_pytest(request: Any, backend: str, check: str, level: str) -> None:
    """Run ``check`` on ``backend`` and turn the outcome into pytest's: pass, ``pytest.fail`` with
    the property that broke, ``pytest.skip("not claimed: ...")``, or the backend's exception."""
    result = run_check(backend, check, level)
    request.node.user_properties.append(
        (RESULT_KEY, {"backend": backend, "check": check, "level": level, **result.to_dict()})
    )
    if result.outcome == "not-claimed":
        pytest.skip(f"not claimed: {check} [{backend}]: {result.details}")
    if result.outcome == "fail":
        pytest.fail(f"{check} [{backend}]: {result.details}", pytrace=False)
    if result.outcome == "error":
        assert result.exception is not None
        raise result.exception
