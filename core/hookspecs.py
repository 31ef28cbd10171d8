"""The plugin hooks of specsample (pluggy project name ``specsample``).

Built-in backends register through :func:`register_backends` exactly like third-party ones; a
third-party package exposes a module with a ``@hookimpl`` function under the entry-point group
``specsample.backends``::

    [project.entry-points."specsample.backends"]
    numpy = "specsample_numpy"
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("specsample")
hookimpl = pluggy.HookimplMarker("specsample")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register zero or more backends.

    Call ``register(BackendClass)`` once per backend, where ``BackendClass`` is a subclass of
    :class:`specsample.Backend` with ``name``, ``description`` and ``capabilities`` set. Do not
    import heavy optional dependencies (triton, cupy) or compile anything here: registration happens
    whenever backends are listed, and :meth:`Backend.is_available` answers lazily.
    """
