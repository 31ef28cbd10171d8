"""specsample-numpy: registers the ``numpy`` backend through specsample's plugin hook.

Importing this module stays cheap: the backend class (and numpy) load inside the hook.
"""

from specsample.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    from .backend import NumpyBackend

    register(NumpyBackend)
