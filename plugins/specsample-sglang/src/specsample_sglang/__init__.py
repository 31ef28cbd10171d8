"""specsample-sglang: registers the ``sglang`` backend through specsample's plugin hook.

Importing this module never imports sgl-kernel (nor torch): the backend class loads inside the
hook and sgl-kernel only when the backend first verifies.
"""

from specsample.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    from .backend import SglangBackend

    register(SglangBackend)
