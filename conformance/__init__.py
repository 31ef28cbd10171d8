"""specsample's conformance suite: checks runnable against any registered backend.

Run it with ``specsample conform``, ``pytest --pyargs specsample.conformance`` or
:func:`specsample.conformance.runner.run_conformance`; see docs/conformance.md. Importing this
package is cheap (the pytest plugin imports it in every pytest run): the checks, and torch, load
when a check runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_conformance"]


def __getattr__(name: str) -> Any:
    if name == "run_conformance":
        from .runner import run_conformance

        return run_conformance
    raise AttributeError(f"module 'specsample.conformance' has no attribute {name!r}")
